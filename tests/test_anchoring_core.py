"""The anchoring state machine and driver together, over a fake chain and a fake log (no I/O).

The chain model is a tiny pure EVM stand-in: a pool, blocks, one nonce per sender, the
AnchorRegistry's rules (allowed submitters, consecutive batch ids, a root once, sizes grow),
receipts with status, and snapshot/revert (what anvil's ``evm_snapshot``/``evm_revert`` do to
simulate a reorg). The log applies every proposed entry at once through :class:`AnchorLog`
over a dict, with the cluster's clock as the leader time. Nodes run :class:`AnchorDriver` and
do its actions synchronously against both.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import pytest

from node.anchoring.driver import (
    KNOWN,
    NONCE_USED,
    SENT,
    WOULD_REVERT,
    Action,
    AnchorDriver,
    Broadcast,
    BuildIntent,
    CheckBlock,
    CheckHead,
    CheckInclusion,
    DriverSettings,
    ProposeFinal,
    ProposeLease,
    ProposeReorg,
    ProposeResult,
    TxInclusion,
    read_snapshot,
)
from node.anchoring.state import (
    ANCHOR_INTENT,
    ANCHORING_FEATURE_VERSION,
    FAILED,
    FINAL,
    INCLUDED,
    INTENT,
    OPEN_BATCHES_MAX,
    AnchorCounters,
    AnchorLog,
    Batch,
    BatchFinal,
    FinalProposal,
    Inclusion,
    IntentProposal,
    Lease,
    LeaseProposal,
    Progress,
    ReorgProposal,
    ResultProposal,
    batch,
    batch_key,
    batches,
    counters,
    first_anchor_covering,
    latest_anchored,
    latest_final,
    lease_of,
    progress_of,
)
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    ApplyOutcome,
    Dispatcher,
    LogPosition,
    StateView,
    decode_app_entry,
    encode_app_entry,
)
from node.errors import ConfigError, UnsupportedFormat

CHAIN_ID = 31337
CONTRACT = b"\xc0" * 20
SIZE_KEY = b"ml/size"  # the fake Merkle log: only its size, roots derived from it


def address(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:20]


def fake_root(size: int) -> bytes:
    return hashlib.sha256(b"root" + size.to_bytes(8, "big")).digest()


def root_at(view: StateView, size: int) -> bytes | None:
    raw = view.get(SIZE_KEY)
    current = int.from_bytes(raw, "big") if raw else 0
    return fake_root(size) if 1 <= size <= current else None


class DictState:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def commit(self, writes: tuple[tuple[bytes, bytes | None], ...]) -> None:
        for key, value in writes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


# ---------------------------------------------------------------------- the fake chain


@dataclass(frozen=True)
class Tx:
    raw: bytes
    tx_hash: bytes
    sender: bytes
    nonce: int
    batch_id: int  # 0: not an anchor (another use of the key)
    tree_size: int
    root: bytes


def sign(sender: bytes, nonce: int, batch_id: int, size: int, root: bytes, fee: int) -> Tx:
    raw = msgpack.packb([sender, nonce, batch_id, size, root, fee])
    return Tx(raw, hashlib.sha256(raw).digest(), sender, nonce, batch_id, size, root)


def decode_tx(raw: bytes) -> Tx:
    sender, nonce, batch_id, size, root, _fee = msgpack.unpackb(raw)
    return Tx(raw, hashlib.sha256(raw).digest(), sender, nonce, batch_id, size, root)


class ChainDown(Exception):
    pass


@dataclass
class Block:
    number: int
    block_hash: bytes
    txs: tuple[tuple[bytes, int], ...]  # (tx hash, status)


class FakeChain:
    """A pure chain model with the AnchorRegistry's rules (see the module docstring)."""

    def __init__(self, submitters: set[bytes]) -> None:
        self.pool: dict[bytes, Tx] = {}
        self.down = False
        self.sent: list[bytes] = []  # tx hashes taken into the pool ("sent"), in order
        self.mined: list[bytes] = []  # every inclusion ever, reorged ones too
        self.others: set[bytes] = set()  # transactions that are not anchors
        self.foreign: dict[bytes, Tx] = {}
        self._salt = 0
        self.s: dict[str, Any] = {
            "nonces": {},
            "blocks": [Block(0, hashlib.sha256(b"genesis").digest(), ())],
            "next_batch": 1,
            "anchors": {},  # batch id -> (size, root, block number)
            "roots": {},
            "receipts": {},  # tx hash -> (block number, block hash, status)
            "submitters": set(submitters),
        }

    # reads
    def head(self) -> int:
        self._up()
        return int(self.s["blocks"][-1].number)

    def head_block(self) -> tuple[int, bytes]:
        self._up()
        last = self.s["blocks"][-1]
        return int(last.number), bytes(last.block_hash)

    def block_hash(self, number: int) -> bytes | None:
        self._up()
        blocks = self.s["blocks"]
        return blocks[number].block_hash if 0 <= number < len(blocks) else None

    def inclusion(self, tx_hash: bytes) -> TxInclusion | None:
        self._up()
        found = self.s["receipts"].get(tx_hash)
        return TxInclusion(*found) if found is not None else None

    def nonce(self, sender: bytes) -> int:
        self._up()
        return self._pending_nonce(sender)

    def _pending_nonce(self, sender: bytes) -> int:
        mined = int(self.s["nonces"].get(sender, 0))
        pooled = [t.nonce + 1 for t in self.pool.values() if t.sender == sender]
        return max([mined, *pooled])

    @property
    def anchors(self) -> dict[int, tuple[int, bytes, int]]:
        return dict(self.s["anchors"])

    # writes
    def send_raw(self, raw: bytes) -> str:
        self._up()
        tx = decode_tx(raw)
        if tx.tx_hash in self.pool or tx.tx_hash in self.s["receipts"]:
            return KNOWN
        if tx.nonce < self.s["nonces"].get(tx.sender, 0):
            return NONCE_USED
        self.pool[tx.tx_hash] = tx
        self.sent.append(tx.tx_hash)
        return SENT

    def mine(self) -> Block:
        included: list[tuple[bytes, int]] = []
        nonces = self.s["nonces"]
        progress = True
        while progress:
            progress = False
            for tx in sorted(self.pool.values(), key=lambda t: (t.sender, t.nonce)):
                if tx.nonce == nonces.get(tx.sender, 0):
                    del self.pool[tx.tx_hash]
                    included.append((tx.tx_hash, self._execute(tx)))
                    nonces[tx.sender] = tx.nonce + 1
                    progress = True
        for tx in list(self.pool.values()):
            if tx.nonce < nonces.get(tx.sender, 0):
                del self.pool[tx.tx_hash]  # can never be mined
        blocks = self.s["blocks"]
        self._salt += 1
        number = len(blocks)
        block_hash = hashlib.sha256(
            blocks[-1].block_hash + number.to_bytes(8, "big") + self._salt.to_bytes(8, "big")
        ).digest()
        block = Block(number, block_hash, tuple(included))
        blocks.append(block)
        for tx_hash, status in included:
            self.s["receipts"][tx_hash] = (number, block_hash, status)
            self.mined.append(tx_hash)
        return block

    def simulate(self, tx: Tx) -> bool:
        """anchor() as a call against the latest state: would it succeed?"""
        self._up()
        return self.simulate_lies or self._allowed(tx)

    simulate_lies = False  # a chain that reverts what it simulated fine

    def _allowed(self, tx: Tx) -> bool:
        s = self.s
        if tx.sender not in s["submitters"] or tx.batch_id != s["next_batch"]:
            return False
        last_size = s["anchors"][tx.batch_id - 1][0] if tx.batch_id > 1 else 0
        return tx.root not in s["roots"] and tx.tree_size > last_size

    def _execute(self, tx: Tx) -> int:
        s = self.s
        if tx.batch_id == 0:
            return 1
        if not self._allowed(tx):
            return 0
        anchors = s["anchors"]
        anchors[tx.batch_id] = (tx.tree_size, tx.root, len(s["blocks"]))
        s["roots"][tx.root] = tx.batch_id
        s["next_batch"] = tx.batch_id + 1
        return 1

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.s)

    def revert(self, snapshot: dict[str, Any]) -> None:
        """Back to a snapshot: later blocks, receipts and the pool are gone (as on anvil).

        Transactions of other uses of a key come back: their wallet sends them again (had
        they vanished, their nonces would leave a gap no anchor intent can fill)."""
        self.s = copy.deepcopy(snapshot)
        self.pool = {h: tx for h, tx in self.foreign.items() if h not in self.s["receipts"]}

    def external_tx(self, sender: bytes) -> None:
        """Another use of a node's key: spends its next nonce."""
        tx = sign(sender, self._pending_nonce(sender), 0, 0, b"\x00" * 32, len(self.others))
        self.pool[tx.tx_hash] = tx
        self.others.add(tx.tx_hash)
        self.foreign[tx.tx_hash] = tx

    def _up(self) -> None:
        if self.down:
            raise ChainDown


# ---------------------------------------------------------------------- the fake cluster


def settings_for(name: str, **overrides: Any) -> DriverSettings:
    base: dict[str, Any] = {
        "node_id": name,
        "sender": address(name),
        "chain_id": CHAIN_ID,
        "contract": CONTRACT,
        "anchor_interval_ms": 10_000,
        "anchor_batch_max": 100,
        "confirmations": 3,
        "lease_ttl_ms": 3_000,
        "open_batches_max": 4,
        "reorg_window_blocks": 12,
        "poll_interval_ms": 200,
        "rebroadcast_interval_ms": 2_000,
        "retry_backoff_base_ms": 100,
        "retry_backoff_max_ms": 2_000,
        "chain_errors_max": 5,
        "replacements_max": 3,
        "proposal_timeout_ms": 1_000,
        "request_timeout_ms": 1_000,
        "lease_acquire_jitter_ms": 300,
        "lease_cooloff_ms": 5_000,
    }
    base.update(overrides)
    return DriverSettings(**base)


class Node:
    def __init__(self, cluster: Cluster, name: str, settings: DriverSettings, seed: int) -> None:
        self.cluster = cluster
        self.name = name
        self.driver = AnchorDriver(settings, random.Random(seed))
        self.alive = True
        self.can_propose = True
        self.has_key = settings.sender is not None
        self.fee = 0
        self.crash_after_send = False  # die right after a broadcast reaches the chain
        self.crash_before_send = False  # die right before a broadcast (intent committed)
        self.broadcasts: list[bytes] = []
        self.reads: list[tuple[int, Action]] = []  # (now, chain read) in order

    def tick(self) -> None:
        if not self.alive:
            return
        c = self.cluster
        snap = read_snapshot(c.state, c.tree_size, self.driver.settings.watch_batches_max)
        actions = self.driver.tick(c.now, snap, can_propose=self.can_propose, has_key=self.has_key)
        for action in actions:
            if not self.alive:
                return
            self.do(action)

    def do(self, action: Action) -> None:
        c = self.cluster
        c.trace.append((c.now, self.name, type(action).__name__))
        if isinstance(action, Broadcast | CheckInclusion | CheckHead | CheckBlock):
            lease = lease_of(c.state)
            assert lease is not None and lease.held_by(self.name, c.now), (
                f"{self.name} acted on the chain without the lease"
            )
        if isinstance(action, ProposeLease | ProposeResult | ProposeFinal | ProposeReorg):
            c.submit(self, action, action.proposal.to_entry())
        elif isinstance(action, BuildIntent):
            self.build_intent(action)
        elif isinstance(action, Broadcast):
            assert action.raw_tx in c.committed_raws, "only committed intents are sent"
            if self.crash_before_send:
                self.alive = False
                return
            try:
                outcome = c.chain.send_raw(action.raw_tx)
            except ChainDown:
                self.driver.on_chain_error(action, "down")
                return
            self.broadcasts.append(action.tx_hash)
            if self.crash_after_send:
                self.alive = False
                return
            self.driver.on_broadcast(action, outcome)
        else:
            try:
                self.reads.append((c.now, action))
                if isinstance(action, CheckInclusion):
                    self.driver.on_inclusion(action, c.chain.inclusion(action.tx_hash))
                elif isinstance(action, CheckHead) and c.head_hashes:
                    self.driver.on_head(action, *c.chain.head_block())
                elif isinstance(action, CheckHead):  # an adapter that reads numbers only
                    self.driver.on_head(action, c.chain.head())
                else:
                    self.driver.on_block_hash(action, c.chain.block_hash(action.number))
            except ChainDown:
                self.driver.on_chain_error(action, "down")

    def build_intent(self, action: BuildIntent) -> None:
        c = self.cluster
        sender = self.driver.settings.sender
        assert sender is not None
        root = root_at(c.state, action.tree_size)
        assert root is not None
        try:
            nonce = max(action.nonce_hint, c.chain.nonce(sender))
        except ChainDown:
            self.driver.on_proposed(action, None)
            return
        self.fee += 1  # fees move: signing again gives other bytes
        tx = sign(sender, nonce, action.batch_id, action.tree_size, root, self.fee)
        if action.simulate and not c.chain.simulate(tx):
            self.driver.on_proposed(action, WOULD_REVERT)
            return
        proposal = action.intent(
            holder=self.name,
            root=root,
            sender=sender,
            nonce=nonce,
            raw_tx=tx.raw,
            tx_hash=tx.tx_hash,
        )
        c.submit(self, action, proposal.to_entry(), tx.raw)


class Cluster:
    def __init__(
        self,
        names: tuple[str, ...] = ("n1", "n2", "n3"),
        *,
        seed: int = 0,
        block_time_ms: int = 1_000,
        delay_max_ms: int = 0,
        loss: float = 0.0,
        head_hashes: bool = True,
        **overrides: Any,
    ) -> None:
        self.rng = random.Random(seed)
        self.head_hashes = head_hashes  # on_head gets the head's hash (what the service does)
        self.delay_max_ms = delay_max_ms  # proposals apply after up to this long...
        self.loss = loss  # ...or are lost (never applied, never answered)
        self.queue: list[tuple[int, int, Node, AnchorDriver, Any, AppEntry, bytes | None]] = []
        self.seq = 0
        self.state = DictState()
        self.machine = AnchorLog(root_at)
        self.chain = FakeChain({address(n) for n in names})
        self.now = 0
        self.index = 0
        self.block_time_ms = block_time_ms
        self.committed_raws: set[bytes] = set()
        self.trace: list[tuple[int, str, str]] = []
        self.outcomes: list[tuple[str, str]] = []
        self.nodes = {
            n: Node(self, n, settings_for(n, **overrides), seed * 100 + i)
            for i, n in enumerate(names)
        }

    @property
    def tree_size(self) -> int:
        raw = self.state.get(SIZE_KEY)
        return int.from_bytes(raw, "big") if raw else 0

    def add_leaves(self, count: int) -> None:
        self.state.data[SIZE_KEY] = (self.tree_size + count).to_bytes(8, "big")

    def propose(self, entry: AppEntry) -> ApplyOutcome:
        payload = decode_app_entry(encode_app_entry(entry))  # through the wire format
        self.index += 1
        outcome = self.machine.apply(payload, LogPosition(self.index, 1, self.now), self.state)
        self.state.commit(outcome.writes)
        self.outcomes.append((entry.type, outcome.code))
        return outcome

    def submit(self, node: Node, action: Any, entry: AppEntry, raw: bytes | None = None) -> None:
        """Propose through the log: applied now, or after a random delay, or lost."""
        if self.delay_max_ms == 0:
            self._deliver(node, node.driver, action, entry, raw)
        elif self.rng.random() >= self.loss:
            due = self.now + self.rng.randint(0, self.delay_max_ms)
            self.seq += 1
            self.queue.append((due, self.seq, node, node.driver, action, entry, raw))

    def _deliver(
        self, node: Node, driver: AnchorDriver, action: Any, entry: AppEntry, raw: bytes | None
    ) -> None:
        outcome = self.propose(entry)
        if raw is not None and outcome.code == "created":
            self.committed_raws.add(raw)
        if node.alive and node.driver is driver:
            driver.on_proposed(action, outcome.code)

    def step(self, dt_ms: int = 100) -> None:
        before = self.now
        self.now += dt_ms
        due = sorted((q for q in self.queue if q[0] <= self.now), key=lambda q: (q[0], q[1]))
        self.queue = [q for q in self.queue if q[0] > self.now]
        for _, _, node, driver, action, entry, raw in due:
            self._deliver(node, driver, action, entry, raw)
        if self.block_time_ms and self.now // self.block_time_ms > before // self.block_time_ms:
            self.chain.mine()
        for name in sorted(self.nodes):
            self.nodes[name].tick()

    def run(self, duration_ms: int, dt_ms: int = 100) -> None:
        end = self.now + duration_ms
        while self.now < end:
            self.step(dt_ms)

    def run_until(self, done: Callable[[], bool], limit_ms: int = 120_000) -> None:
        end = self.now + limit_ms
        while not done():
            assert self.now < end, f"not done after {limit_ms} ms"
            self.step()

    # views
    @property
    def progress(self) -> Progress:
        return progress_of(self.state)

    @property
    def counters(self) -> AnchorCounters:
        return counters(self.state)

    def batches(self) -> list[Batch]:
        return batches(self.state, 1, 10_000)

    def holder(self) -> str | None:
        lease = lease_of(self.state)
        return lease.holder if lease is not None and lease.held_by(lease.holder, self.now) else None

    def all_final(self) -> bool:
        p = self.progress
        return p.final_through == p.next_batch_id - 1 and self.covered() == self.tree_size

    def covered(self) -> int:
        last = latest_final(self.state)
        return last.tree_size if last is not None else 0


def check_chain_matches_log(c: Cluster) -> None:
    """Every batch is on the chain exactly as the log says, by exactly its recorded tx."""
    anchors = c.chain.anchors
    bs = c.batches()
    assert sorted(anchors) == [b.batch_id for b in bs]
    for b in bs:
        size, root, _ = anchors[b.batch_id]
        assert (size, root) == (b.tree_size, b.root)
        assert b.inclusion is not None
        receipt = c.chain.inclusion(b.tx_hash)
        assert receipt == TxInclusion(b.inclusion.block_number, b.inclusion.block_hash, 1)


# ---------------------------------------------------------------------- state machine tables


def position(index: int, now_ms: int) -> LogPosition:
    return LogPosition(index, 1, now_ms)


class Log:
    """The anchoring machine alone over a dict, entries applied at given leader times."""

    def __init__(self, tree_size: int = 1_000) -> None:
        self.state = DictState()
        self.state.data[SIZE_KEY] = tree_size.to_bytes(8, "big")
        self.machine = AnchorLog(root_at)
        self.index = 0

    def apply(self, entry: AppEntry, now_ms: int = 0) -> ApplyOutcome:
        self.index += 1
        outcome = self.machine.apply(
            decode_app_entry(encode_app_entry(entry)), position(self.index, now_ms), self.state
        )
        self.state.commit(outcome.writes)
        return outcome

    def lease(self, node: str = "a", now_ms: int = 0, ttl_ms: int = 10_000) -> str:
        return self.apply(LeaseProposal(node, ttl_ms).to_entry(), now_ms).code

    def intent(self, batch_id: int, size: int, holder: str = "a", **kw: Any) -> ApplyOutcome:
        return self.apply(intent_entry(batch_id, size, holder, **kw), kw.pop("now_ms", 0))

    def result(self, batch_id: int, holder: str = "a", **kw: Any) -> ApplyOutcome:
        held = batch(self.state, batch_id)
        fields: dict[str, Any] = {
            "holder": holder,
            "batch_id": batch_id,
            "tx_hash": held.tx_hash if held is not None else b"\x01" * 32,
            "chain_id": CHAIN_ID,
            "contract": CONTRACT,
            "block_number": 10 + batch_id,
            "block_hash": block_hash_for(batch_id),
            "status": 1,
        }
        fields.update(kw)
        return self.apply(ResultProposal(**fields).to_entry())

    def final(self, batch_id: int, holder: str = "a", **kw: Any) -> ApplyOutcome:
        fields: dict[str, Any] = {
            "holder": holder,
            "batch_id": batch_id,
            "block_hash": block_hash_for(batch_id),
            "confirmations": 3,
        }
        fields.update(kw)
        return self.apply(FinalProposal(**fields).to_entry())

    def reorg(self, batch_id: int, holder: str = "a", vanished: bytes | None = None) -> str:
        gone = vanished if vanished is not None else block_hash_for(batch_id)
        return self.apply(ReorgProposal(holder, batch_id, gone).to_entry()).code


def block_hash_for(batch_id: int) -> bytes:
    return hashlib.sha256(b"block" + bytes([batch_id])).digest()


def intent_entry(
    batch_id: int,
    size: int,
    holder: str = "a",
    *,
    nonce: int | None = None,
    why: str = "size",
    replaces: bytes | None = None,
    root: bytes | None = None,
    fee: int = 0,
    now_ms: int = 0,
) -> AppEntry:
    sender = address(holder)
    tx = sign(
        sender, batch_id - 1 if nonce is None else nonce, batch_id, size, fake_root(size), fee
    )
    return IntentProposal(
        holder=holder,
        batch_id=batch_id,
        tree_size=size,
        root=fake_root(size) if root is None else root,
        sender=sender,
        nonce=tx.nonce,
        raw_tx=tx.raw,
        tx_hash=tx.tx_hash,
        why=why,
        replaces=replaces,
    ).to_entry()


@pytest.mark.parametrize(
    ("steps", "codes", "holder", "epoch"),
    [
        # "node@leader time ms" takes or renews the lease, a trailing "!" releases it; ttl 10 s
        ("a@0", "created", "a", 1),
        ("a@0 b@5000", "created held", "a", 1),
        ("a@0 a@5000 b@12000", "created renewed held", "a", 1),
        ("a@0 b@10000", "created created", "b", 2),  # expired at its leader time
        ("a@0 a@10000", "created created", "a", 2),  # lapsed, then granted anew
        ("a@0 a@1000! b@1001", "created released created", "b", 2),
        ("a@0 b@1000!", "created not_holder", "a", 1),
        ("a@0!", "not_holder", None, None),
        ("a@0 a@10000!", "created not_holder", "a", 1),
    ],
)
def test_lease_rules(steps: str, codes: str, holder: str | None, epoch: int | None) -> None:
    log = Log()
    got = []
    for step in steps.split():
        node, at = step.rstrip("!").split("@")
        entry = LeaseProposal(node, 10_000, release=step.endswith("!")).to_entry()
        got.append(log.apply(entry, int(at)).code)
    assert got == codes.split()
    lease = lease_of(log.state)
    assert (lease.holder if lease else None, lease.epoch if lease else None) == (holder, epoch)
    assert counters(log.state).leases_granted == got.count("created")


def test_only_the_holder_commits_intents_and_they_follow_the_log() -> None:
    log = Log(tree_size=50)
    assert log.intent(1, 10).code == "not_holder"  # no lease at all
    log.lease("a")
    assert log.intent(1, 10, holder="b").code == "not_holder"
    assert log.intent(2, 10).detail == {"reason": "batch_id", "next": 1}
    assert log.intent(1, 60).detail == {"reason": "root_mismatch", "size": 60}  # log has 50
    assert log.intent(1, 10, root=b"\x07" * 32).code == "rejected"
    first = log.intent(1, 10)
    assert (first.code, first.detail["state"]) == ("created", INTENT)
    assert log.intent(1, 10).code == "existing"  # the same entry again (a retry)
    assert log.intent(1, 10, fee=1).code == "stale"  # another tx for batch 1: never
    assert log.intent(2, 10).detail == {"reason": "tree_not_grown", "size": 10}
    assert log.intent(2, 11, why="interval").code == "created"
    assert log.intent(3, 12, why="nonce_used", replaces=b"\x01" * 32).code == "rejected"
    b1 = batch(log.state, 1)
    assert b1 is not None and (b1.tree_size, b1.trigger, b1.attempt) == (10, "size", 0)
    assert (counters(log.state).size_triggered, counters(log.state).interval_triggered) == (1, 1)
    assert progress_of(log.state) == Progress(3, 0, 0)
    assert log.apply(LeaseProposal("b", 10_000).to_entry(), 10_000).code == "created"
    assert log.apply(intent_entry(3, 12, "a"), 10_000).code == "not_holder"  # a lapsed


def test_open_batches_are_bounded() -> None:
    log = Log(tree_size=OPEN_BATCHES_MAX + 5)
    log.lease("a")
    for i in range(1, OPEN_BATCHES_MAX + 1):
        assert log.intent(i, i).code == "created"
    assert log.intent(OPEN_BATCHES_MAX + 1, OPEN_BATCHES_MAX + 1).code == "too_many_open"
    assert log.result(1).code == "created"
    assert log.intent(OPEN_BATCHES_MAX + 1, OPEN_BATCHES_MAX + 1).code == "created"


def test_results_in_order_and_stale_ones_ignored() -> None:
    log = Log()
    log.lease("a")
    log.intent(1, 10)
    log.intent(2, 20)
    assert log.result(2).code == "out_of_order"
    assert log.result(1, holder="b").code == "not_holder"
    assert log.result(1, tx_hash=b"\x09" * 32).code == "stale"
    assert log.result(7).code == "unknown_batch"
    assert log.result(1).code == "created"
    assert log.result(1).code == "existing"
    assert log.result(1, block_hash=b"\x08" * 32).code == "stale"
    assert log.result(2).code == "created"
    assert latest_anchored(log.state) == batch(log.state, 2)
    assert latest_final(log.state) is None
    b = batch(log.state, 1)
    assert b is not None and b.inclusion is not None
    assert (b.state, b.inclusion.block_number, b.inclusion.result_index) == (INCLUDED, 11, 8)


def test_finality_in_order_of_the_included_block() -> None:
    log = Log()
    log.lease("a")
    log.intent(1, 10)
    log.intent(2, 20)
    assert log.final(1).code == "stale"  # not included yet
    log.result(1)
    log.result(2)
    assert log.final(2).code == "out_of_order"
    assert log.final(1, block_hash=b"\x05" * 32).code == "stale"
    assert log.final(1, holder="b").code == "not_holder"
    assert log.final(1).code == "created"
    assert log.final(1).code == "existing"
    assert log.final(2, confirmations=5).code == "created"
    assert progress_of(log.state) == Progress(3, 2, 2)
    assert counters(log.state).finals == 2
    b = batch(log.state, 2)
    assert b is not None and b.final == BatchFinal(5, 12, 0)


def test_a_reorg_sends_the_batch_and_every_later_one_back() -> None:
    log = Log()
    log.lease("a")
    for i in (1, 2, 3, 4):
        log.intent(i, 10 * i)
    for i in (1, 2, 3):
        log.result(i)
    log.final(1)
    log.final(2)
    sent = batch(log.state, 2)
    assert log.reorg(2, vanished=b"\x04" * 32) == "stale"  # another block: not ours
    assert log.reorg(4) == "stale"  # never included
    assert log.reorg(2, holder="b") == "not_holder"
    assert log.reorg(2) == "created"
    assert progress_of(log.state) == Progress(5, 1, 1)
    states = [(b.batch_id, b.state, b.reorgs) for b in batches(log.state, 1, 10)]
    assert states == [(1, FINAL, 0), (2, INTENT, 1), (3, INTENT, 1), (4, INTENT, 0)]
    assert counters(log.state).reanchors == 2
    assert log.reorg(2) == "stale"  # already sent back
    assert log.result(2).code == "created"  # its same transaction lands again
    again = batch(log.state, 2)
    assert sent is not None and again is not None
    assert (again.tx_hash, again.raw_tx, again.attempt) == (sent.tx_hash, sent.raw_tx, 0)


def test_replacements_only_for_a_dead_transaction() -> None:
    log = Log()
    log.lease("a")
    log.intent(1, 10)
    old = batch(log.state, 1)
    assert old is not None
    # Its transaction may still land: no replacement.
    assert log.intent(1, 10, fee=1, why="reverted", replaces=old.tx_hash).code == "stale"
    # The nonce was spent by another transaction and ours is not mined: replace it (CAS).
    assert log.intent(1, 10, fee=1, why="nonce_used", replaces=b"\x03" * 32).code == "stale"
    assert log.intent(1, 11, fee=1, why="nonce_used", replaces=old.tx_hash).code == "rejected"
    replaced = log.intent(1, 10, nonce=5, fee=1, why="nonce_used", replaces=old.tx_hash)
    assert (replaced.code, replaced.detail["attempt"]) == ("created", 1)
    assert log.intent(1, 10, nonce=6, fee=2, why="nonce_used", replaces=old.tx_hash).code == "stale"
    now = batch(log.state, 1)
    assert now is not None and (now.nonce, now.trigger, now.state) == (5, "size", INTENT)
    assert log.result(1, tx_hash=old.tx_hash).code == "stale"  # the replaced one is dead
    # A reverted receipt fails the batch; the replacement follows.
    assert log.result(1, status=0).code == "created"
    failed = batch(log.state, 1)
    assert failed is not None and failed.state == FAILED
    assert progress_of(log.state).included_through == 0
    assert log.intent(1, 10, nonce=6, fee=3, why="nonce_used", replaces=now.tx_hash).code == "stale"
    again = log.intent(1, 10, nonce=6, fee=3, why="reverted", replaces=now.tx_hash)
    assert (again.code, again.detail["attempt"]) == ("created", 2)
    assert (counters(log.state).replacements, counters(log.state).reverted) == (2, 1)
    assert counters(log.state).size_triggered == 1


def test_first_anchor_covering_is_a_binary_search() -> None:
    log = Log(tree_size=100)
    log.lease("a")
    sizes = [3, 4, 10, 11, 40, 90]
    for i, size in enumerate(sizes, 1):
        log.intent(i, size)
    for i in range(1, 6):
        log.result(i)
    for i in (1, 2, 3):
        log.final(i)
    reads = 0
    real_get = log.state.get

    def counting_get(key: bytes) -> bytes | None:
        nonlocal reads
        reads += key.startswith(b"an/b/")
        return real_get(key)

    log.state.get = counting_get  # type: ignore[method-assign]
    expected = {0: 1, 2: 1, 3: 2, 4: 3, 9: 3, 10: 4, 11: 5, 39: 5, 40: None, 89: None, 500: None}
    for leaf, want in expected.items():
        reads = 0
        found = first_anchor_covering(log.state, leaf)
        assert (found.batch_id if found else None) == want, leaf
        assert reads <= 3  # log2(5) + 1
    final = first_anchor_covering(log.state, 10, final_only=True)
    assert final is None
    assert first_anchor_covering(log.state, -1) is None


def test_entry_types_wait_for_feature_version_3() -> None:
    machine = AnchorLog(root_at)
    dispatcher = Dispatcher([machine], feature_version_max=ANCHORING_FEATURE_VERSION)
    state = DictState()
    lease = encode_app_entry(LeaseProposal("a", 5_000).to_entry())
    applied, writes = dispatcher.apply_batch([(position(1, 0), lease)], state)
    assert applied[0].outcome.code == "feature_not_enabled" and writes == []
    feature = encode_app_entry(AppEntry(FEATURE_ENTRY, {"version": ANCHORING_FEATURE_VERSION}))
    applied, writes = dispatcher.apply_batch(
        [(position(2, 0), feature), (position(3, 0), lease)], state
    )
    assert [a.outcome.code for a in applied] == ["created", "created"]
    state.commit(tuple(writes))
    assert lease_of(state) == Lease("a", 0, 0, 5_000, 5_000, 1)


# ---------------------------------------------------------------------- strict formats


def _values() -> list[Any]:
    inclusion = Inclusion(CHAIN_ID, CONTRACT, 12, b"\x0b" * 32, 1, 9, 1_000)
    intent = Batch(
        batch_id=3,
        tree_size=40,
        root=b"\x01" * 32,
        trigger="interval",
        holder="n1",
        sender=address("n1"),
        nonce=7,
        raw_tx=b"\x02" * 120,
        tx_hash=b"\x03" * 32,
        intent_index=5,
        intent_ms=900,
        attempt=1,
        state=INTENT,
        reorgs=2,
    )
    return [
        Lease("n1", 1, 2, 3, 4, 5),
        Progress(7, 5, 2),
        AnchorCounters(1, 2, 3, 4, 5, 6, 7),
        intent,
        replace(intent, state=INCLUDED, inclusion=inclusion),
        replace(intent, state=FAILED, inclusion=replace(inclusion, status=0)),
        replace(intent, state=FINAL, inclusion=inclusion, final=BatchFinal(3, 11, 2_000)),
    ]


@pytest.mark.parametrize("value", _values(), ids=lambda v: type(v).__name__)
def test_every_state_value_round_trips(value: Any) -> None:
    raw = value.encode()
    decoded = value.decode(3, raw) if isinstance(value, Batch) else type(value).decode(raw)
    assert decoded == value
    assert decoded.encode() == raw
    fields = msgpack.unpackb(raw)
    for bad in (
        [2, *fields[1:]],  # unknown version
        [True, *fields[1:]],  # a bool is not a version
        [*fields, 0],  # a field too many
        fields[:-1],  # one missing
    ):
        with pytest.raises(UnsupportedFormat):
            _decode(value, msgpack.packb(bad))
    with pytest.raises(UnsupportedFormat):
        _decode(value, b"\xc1")


def _decode(value: Any, raw: bytes) -> Any:
    return value.decode(3, raw) if isinstance(value, Batch) else type(value).decode(raw)


def test_batch_parts_must_match_its_state() -> None:
    intent = _values()[3]
    inclusion = Inclusion(CHAIN_ID, CONTRACT, 12, b"\x0b" * 32, 1, 9, 1_000)
    for bad in (
        {"state": INCLUDED},
        {"inclusion": inclusion},
        {"state": FAILED, "inclusion": inclusion},  # status 1 but failed
        {"state": "lost"},
    ):
        with pytest.raises(UnsupportedFormat):
            replace(intent, **bad)
    fields = msgpack.unpackb(intent.encode())
    fields[5] = b"\x01" * 19  # a short sender address
    with pytest.raises(UnsupportedFormat):
        Batch.decode(3, msgpack.packb(fields))


def _entries() -> list[AppEntry]:
    return [
        LeaseProposal("n1", 3_000).to_entry(),
        LeaseProposal("n1", 3_000, release=True).to_entry(),
        intent_entry(1, 10),
        intent_entry(1, 10, why="reverted", replaces=b"\x05" * 32),
        ResultProposal("n1", 1, b"\x01" * 32, CHAIN_ID, CONTRACT, 5, b"\x02" * 32, 0).to_entry(),
        FinalProposal("n1", 1, b"\x02" * 32, 3).to_entry(),
        ReorgProposal("n1", 1, b"\x02" * 32).to_entry(),
    ]


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.type)
def test_every_entry_round_trips_and_is_decoded_strictly(entry: AppEntry) -> None:
    machine = AnchorLog(root_at)
    wire = decode_app_entry(encode_app_entry(entry))
    assert wire == entry
    kinds = {
        "anchor.lease": LeaseProposal,
        "anchor.intent": IntentProposal,
        "anchor.result": ResultProposal,
        "anchor.final": FinalProposal,
        "anchor.reorg": ReorgProposal,
    }
    proposal = kinds[entry.type].from_body(wire.body)  # type: ignore[attr-defined]
    assert proposal.to_entry() == entry
    state = DictState()
    extra = AppEntry(entry.type, {**entry.body, "more": 1})
    assert machine.apply(extra, position(1, 0), state).code == "malformed"
    for key in entry.body:
        missing = AppEntry(entry.type, {k: v for k, v in entry.body.items() if k != key})
        assert machine.apply(missing, position(1, 0), state).code == "malformed", key
        wrong = AppEntry(entry.type, {**entry.body, key: [1]})
        assert machine.apply(wrong, position(1, 0), state).code == "malformed", key


@pytest.mark.parametrize(
    "change",
    [
        {"raw": b""},
        {"raw": b"\x00" * 4097},
        {"tx": b"\x00" * 31},
        {"sender": b"\x00" * 32},
        {"batch": 0},
        {"batch": True},
        {"size": 0},
        {"nonce": -1},
        {"why": "bored"},
        {"why": "reverted"},  # a replacement must name what it replaces
    ],
)
def test_intent_fields_are_bounded(change: dict[str, Any]) -> None:
    entry = intent_entry(1, 10)
    log = Log()
    log.lease("a")
    bad = AppEntry(ANCHOR_INTENT, {**entry.body, **change})
    assert log.apply(bad).code == "malformed"
    assert log.apply(entry).code == "created"


def test_lease_ttl_is_bounded() -> None:
    for ttl in (999, 3_600_001):
        with pytest.raises(UnsupportedFormat):
            LeaseProposal("a", ttl)
    with pytest.raises(ConfigError, match="confirmations"):
        settings_for("n1", confirmations=0)
    with pytest.raises(ConfigError, match="retry_backoff_max_ms"):
        settings_for("n1", retry_backoff_max_ms=10)


# ---------------------------------------------------------------------- driver + chain scenarios


def test_one_holder_anchors_and_renews() -> None:
    c = Cluster()
    c.add_leaves(5)
    c.run(5_000)
    holders = {b.holder for b in c.batches()}
    assert len(holders) == 1
    holder = holders.pop()
    assert c.holder() == holder
    for name, node in c.nodes.items():
        assert node.driver.holding == (name == holder)
    # the lease is renewed every ttl/3 (1 s), never lost while the holder lives
    c.run(20_000)
    assert c.counters.leases_granted == 1
    assert c.holder() == holder


@pytest.mark.parametrize("leaves", [1, 7, 100, 5_000, 1_000_000])
def test_one_transaction_per_anchor_whatever_the_batch_size(leaves: int) -> None:
    c = Cluster()
    c.add_leaves(leaves)
    c.run_until(c.all_final)
    assert c.progress.next_batch_id == 2
    assert len(c.chain.sent) == 1 and len(set(c.chain.mined)) == 1
    check_chain_matches_log(c)
    assert c.covered() == leaves


@pytest.mark.parametrize(
    ("arrivals", "size_triggered", "interval_triggered"),
    [
        # (at ms, leaves); batch_max 100, interval 10 s
        ([(0, 1)], 0, 1),  # the first leaf is anchored at once (no earlier batch)
        ([(0, 100)], 1, 0),
        ([(0, 250)], 1, 0),  # one batch for all of them
        ([(0, 1), (2_000, 30), (4_000, 30)], 0, 2),  # the rest waits for the interval
        ([(0, 1), (2_000, 60), (4_000, 60)], 1, 1),  # 120 >= 100 at 4 s: size
        ([(0, 100), (1_000, 100), (2_000, 100), (3_000, 100)], 4, 0),
        ([(0, 1), (30_000, 1)], 0, 2),  # quiet: no empty anchors in between
    ],
)
def test_size_and_interval_triggers(
    arrivals: list[tuple[int, int]], size_triggered: int, interval_triggered: int
) -> None:
    c = Cluster()
    for at_ms, count in arrivals:
        if at_ms > c.now:
            c.run(at_ms - c.now)
        c.add_leaves(count)
    c.run_until(c.all_final)
    c.run(25_000)  # nothing new: nothing more
    k = c.counters
    assert (k.size_triggered, k.interval_triggered) == (size_triggered, interval_triggered)
    assert len(c.chain.sent) == k.size_triggered + k.interval_triggered + k.reanchors
    assert len(c.chain.mined) == len(c.chain.sent)
    check_chain_matches_log(c)


def test_anchor_lag_is_bounded_by_interval_and_confirmations() -> None:
    c = Cluster(seed=3)
    rng = random.Random(3)
    arrivals: list[tuple[int, int]] = []  # (time, tree size after)
    while c.now < 120_000:
        if rng.random() < 0.3:
            c.add_leaves(rng.randint(1, 30))
            arrivals.append((c.now, c.tree_size))
        c.step()
    c.run_until(c.all_final)
    finals = sorted((b.final.final_ms, b.tree_size) for b in c.batches() if b.final is not None)
    bound_ms = 10_000 + 3 * 1_000 + 1_000
    for at, size in arrivals:
        final_at = next(t for t, covered in finals if covered >= size)
        assert final_at - at <= bound_ms, (at, size, final_at)


@pytest.mark.parametrize("where", ["mined", "in_pool", "dropped", "never_sent"])
def test_a_holder_killed_between_send_and_result_neither_loses_nor_doubles(where: str) -> None:
    c = Cluster(block_time_ms=0)  # mine by hand
    c.add_leaves(42)
    first = None
    while first is None:
        c.step()
        first = next((n for n in c.nodes.values() if n.driver.holding), None)
    if where == "never_sent":
        first.crash_before_send = True
    else:
        first.crash_after_send = True
    c.run_until(lambda: not first.alive, 5_000)
    assert c.progress.next_batch_id == 2 and c.progress.included_through == 0
    committed = batch(c.state, 1)
    assert committed is not None and committed.holder == first.name
    if where == "mined":
        c.chain.mine()
    elif where == "dropped":
        c.chain.pool.clear()
    c.block_time_ms = 1_000
    c.run_until(c.all_final, 30_000)
    landed = batch(c.state, 1)
    assert landed is not None
    assert landed.tx_hash == committed.tx_hash and landed.raw_tx == committed.raw_tx
    assert landed.attempt == 0 and c.counters.replacements == 0
    assert c.chain.mined == [committed.tx_hash]  # one transaction, once
    assert c.progress.next_batch_id == 2
    assert c.counters.leases_granted == 2
    check_chain_matches_log(c)
    second = next(n for n in c.nodes.values() if n.alive and n.driver.holding)
    assert committed.tx_hash in second.broadcasts  # the same bytes, sent by the new holder


def test_a_reorg_reanchors_the_batch_and_the_later_ones() -> None:
    c = Cluster()
    c.add_leaves(150)
    c.run_until(lambda: c.progress.final_through == 1)
    before_second = c.chain.snapshot()
    c.add_leaves(150)
    c.run_until(lambda: c.progress.included_through == 2)
    c.add_leaves(150)
    c.run_until(lambda: c.progress.included_through == 3)
    assert c.progress.final_through < 3
    txs = {b.batch_id: b.tx_hash for b in c.batches()}
    c.chain.revert(before_second)  # batches 2 and 3 are no longer on the chain
    assert c.chain.anchors.keys() == {1}
    c.run_until(lambda: batch(c.state, 2).state == INTENT)  # type: ignore[union-attr]
    assert latest_final(c.state) == batch(c.state, 1)  # reported not final
    assert [b.state for b in c.batches()] == [FINAL, INTENT, INTENT]
    c.run_until(c.all_final)
    assert c.counters.reanchors == 2
    assert {b.batch_id: b.tx_hash for b in c.batches()} == txs  # the same transactions
    assert [b.reorgs for b in c.batches()] == [0, 1, 1]
    k = c.counters
    assert len(c.chain.sent) == k.size_triggered + k.interval_triggered + k.reanchors == 5
    check_chain_matches_log(c)


def test_a_reorg_of_a_final_batch_inside_the_window_is_caught() -> None:
    c = Cluster()
    snap = c.chain.snapshot()
    c.add_leaves(10)
    c.run_until(c.all_final)
    c.run(3_000)
    c.chain.revert(snap)
    for _ in range(2):
        c.chain.mine()
    c.run_until(lambda: c.counters.reanchors == 1, 10_000)
    c.run_until(c.all_final)
    check_chain_matches_log(c)


def test_final_batches_are_watched_inside_the_window_only() -> None:
    c = Cluster(reorg_window_blocks=5)
    c.add_leaves(10)
    c.run_until(c.all_final)
    start = len(c.trace)
    c.run(10_000)
    checks = [at for at, _, kind in c.trace[start:] if kind == "CheckBlock"]
    assert checks and max(checks) < c.now - 5_000  # watched a while, then no more


# ---------------------------------------------------------------------- what a poll reads


def reads_in(c: Cluster, start_ms: int) -> dict[str, int]:
    """Chain reads since ``start_ms``, by kind."""
    counts: dict[str, int] = {}
    for node in c.nodes.values():
        for at, action in node.reads:
            if at > start_ms:
                counts[type(action).__name__] = counts.get(type(action).__name__, 0) + 1
    return counts


def three_final_batches(head_hashes: bool, **overrides: Any) -> tuple[Cluster, int]:
    """Three batches final, each in its own block, blocks every second until then, none after;
    returns the cluster and how many blocks are watched."""
    c = Cluster(head_hashes=head_hashes, **overrides)
    for batch_id in (1, 2, 3):
        c.add_leaves(150)
        c.run_until(lambda b=batch_id: c.progress.included_through == b)  # type: ignore[misc]
    c.run_until(c.all_final)
    c.block_time_ms = 0
    c.run(1_000)  # settle: the last block's reads are done
    watched = {_block_of_batch(b) for b in c.batches()}
    assert len(watched) == 3
    return c, len(watched)


def _block_of_batch(b: Batch) -> int:
    assert b.inclusion is not None
    return b.inclusion.block_number


# Two seconds with polls every 200 ms (10 polls), three final batches watched in three blocks.
@pytest.mark.parametrize(
    ("head_hashes", "blocks_mined", "heads", "block_reads"),
    [
        (True, 0, 10, 0),  # nothing moved: the head, once a poll, and nothing else
        (True, 1, 10, 1),  # a new block: one read of the former head vouches for all three
        (True, 3, 10, 3),  # one read per new block, whatever the number of watched batches
        (False, 0, 10, 30),  # an adapter without the head's hash: every block every poll
        (False, 3, 10, 30),
    ],
)
def test_a_poll_reads_what_the_head_moved(
    head_hashes: bool, blocks_mined: int, heads: int, block_reads: int
) -> None:
    c, _ = three_final_batches(head_hashes, recheck_interval_ms=60_000)
    start = c.now
    for _ in range(blocks_mined):
        c.chain.mine()
        c.run(600)
    c.run(2_000 - 600 * blocks_mined)
    reads = reads_in(c, start)
    assert reads.get("CheckHead", 0) == heads
    assert reads.get("CheckBlock", 0) == block_reads
    assert c.counters.reanchors == 0


def test_a_block_is_read_itself_once_per_recheck_interval() -> None:
    c, watched = three_final_batches(True, recheck_interval_ms=1_000)
    start = c.now
    c.run(4_000)  # the head never moves
    assert reads_in(c, start).get("CheckBlock", 0) == 4 * watched


def test_a_reorg_under_an_unmoved_height_is_caught_through_the_former_head() -> None:
    """The former head is gone (same height, another block): every watched block is read
    itself, the reorged one is found gone and re-anchored."""
    c, _ = three_final_batches(True, recheck_interval_ms=60_000)
    snap = c.chain.snapshot()
    c.add_leaves(150)
    c.run_until(lambda: len(c.chain.sent) == 4)
    c.chain.mine()
    c.run_until(lambda: c.progress.included_through == 4)
    c.chain.mine()  # the head is above every batch's block
    c.run(1_000)
    height = c.chain.head()
    c.chain.revert(snap)
    c.chain.mine()  # two other blocks up to the same height: as long a chain, another head
    c.chain.mine()
    assert c.chain.head() == height
    start = c.now
    c.run_until(lambda: c.counters.reanchors == 1, 10_000)
    # One read of the former head finds it gone; then each of the four batches' blocks is
    # read itself, and batch 4's is gone.
    assert reads_in(c, start).get("CheckBlock", 0) == 1 + 4
    c.block_time_ms = 1_000
    c.run_until(c.all_final)
    check_chain_matches_log(c)


def test_a_pending_receipt_is_read_again_only_when_the_head_moved() -> None:
    c = Cluster(block_time_ms=0, recheck_interval_ms=60_000)
    c.add_leaves(150)
    c.run_until(lambda: bool(c.chain.sent))
    c.run(400)
    start = c.now
    c.run(2_000)
    assert reads_in(c, start).get("CheckInclusion", 0) == 0  # nothing mined: nothing to see
    c.chain.mine()
    c.run_until(lambda: c.progress.included_through == 1, 2_000)
    assert reads_in(c, start).get("CheckInclusion", 0) == 1


def test_a_spent_nonce_gets_a_replacement() -> None:
    c = Cluster(block_time_ms=0)
    c.add_leaves(5)
    first = None
    while first is None:
        c.step()
        first = next((n for n in c.nodes.values() if n.driver.holding), None)
    first.crash_before_send = True
    c.run_until(lambda: not first.alive, 5_000)
    dead = batch(c.state, 1)
    assert dead is not None
    c.chain.external_tx(dead.sender)  # the key was used elsewhere: its nonce is gone
    c.chain.mine()
    c.block_time_ms = 1_000
    c.run_until(c.all_final, 30_000)
    landed = batch(c.state, 1)
    assert landed is not None and landed.attempt == 1 and landed.tx_hash != dead.tx_hash
    assert c.counters.replacements == 1 and c.counters.reverted == 0
    check_chain_matches_log(c)


def test_an_anchor_that_would_revert_costs_no_transaction() -> None:
    c = Cluster()
    allowed = set(c.chain.s["submitters"])
    c.chain.s["submitters"].clear()  # the registry refuses every node
    c.add_leaves(5)
    c.run(20_000)
    assert c.chain.sent == [] and c.progress.next_batch_id == 1
    calls = sum(kind == "BuildIntent" for _, _, kind in c.trace)
    assert 3 <= calls <= 20  # retried with a growing back-off (capped at 2 s)
    c.chain.s["submitters"] |= allowed
    c.run_until(c.all_final, 10_000)
    assert len(c.chain.sent) == 1
    check_chain_matches_log(c)


def test_a_reverted_anchor_is_replaced_then_reported_stuck() -> None:
    c = Cluster(replacements_max=2, reorg_window_blocks=4)
    c.chain.simulate_lies = True
    c.chain.s["submitters"].clear()  # every anchor reverts on the chain
    c.add_leaves(5)
    c.run(30_000)
    b1 = batch(c.state, 1)
    assert b1 is not None and (b1.state, b1.attempt) == (FAILED, 2)
    assert c.counters.reverted == 3 and c.counters.replacements == 2
    holder = next(n for n in c.nodes.values() if n.driver.holding)
    assert holder.driver.stuck_batch == 1
    c.add_leaves(500)
    c.run(5_000)
    assert c.progress.next_batch_id == 2  # nothing new goes out behind a stuck batch
    assert holder.driver.status()["stuck_batch"] == 1
    # A restart (or another holder) tries again; the chain accepts it now.
    c.chain.s["submitters"] = {address(n) for n in c.nodes}
    restart(c, holder, 0)
    c.run_until(c.all_final, 20_000)
    landed = batch(c.state, 1)
    assert landed is not None and landed.attempt == 3
    check_chain_matches_log(c)


def test_a_reverted_anchor_is_replaced_once_allowed_again() -> None:
    c = Cluster()
    allowed = set(c.chain.s["submitters"])
    c.add_leaves(5)
    c.run_until(lambda: c.progress.next_batch_id == 2)  # simulated fine, not mined yet
    c.chain.s["submitters"].clear()  # revoked before it is mined
    c.run_until(lambda: c.counters.reverted == 1)
    c.run(3_000)
    assert c.counters.replacements == 0  # a replacement would revert too: not signed
    c.chain.s["submitters"] |= allowed
    c.run_until(c.all_final)
    landed = batch(c.state, 1)
    assert landed is not None and landed.attempt == 1
    assert len(c.chain.sent) == 2
    check_chain_matches_log(c)


def test_chain_errors_back_off_then_give_the_lease_up() -> None:
    c = Cluster()
    c.add_leaves(5)
    c.run_until(lambda: c.holder() is not None)
    first = c.holder()
    c.chain.down = True
    c.run(4_000)
    calls = [t for t in c.trace if t[1] == first and t[2].startswith("Check")]
    assert len(calls) < 40  # 4 s of 200 ms polls would be 20 rounds of several calls
    c.run_until(lambda: c.holder() not in (None, first), 20_000)
    assert c.nodes[first].driver.stats.leases_released == 1
    c.chain.down = False
    c.run_until(c.all_final, 60_000)
    check_chain_matches_log(c)


def test_no_key_or_no_proposing_means_no_lease() -> None:
    c = Cluster(("n1", "n2"))
    c.nodes["n1"].has_key = False
    c.nodes["n2"].can_propose = False
    c.add_leaves(5)
    c.run(10_000)
    assert lease_of(c.state) is None and c.trace == []
    c.nodes["n2"].can_propose = True
    c.run_until(c.all_final)
    assert {b.holder for b in c.batches()} == {"n2"}


def test_a_stopping_holder_hands_over_at_once() -> None:
    c = Cluster(lease_ttl_ms=60_000)
    c.add_leaves(5)
    c.run_until(c.all_final)
    holder = c.nodes[c.holder() or ""]
    snap = read_snapshot(c.state, c.tree_size, 64)
    for action in holder.driver.stop(c.now, snap):
        holder.do(action)
    holder.alive = False
    assert c.holder() is None
    c.add_leaves(5)
    c.run_until(c.all_final, 20_000)  # far less than the 60 s ttl
    assert c.holder() not in (None, holder.name)


def test_backoff_is_bounded_and_seeded() -> None:
    s = settings_for("n1")
    a, b = AnchorDriver(s, random.Random(7)), AnchorDriver(s, random.Random(7))
    delays = [a._backoff_ms(n) for n in range(1, 12)]
    assert delays == [b._backoff_ms(n) for n in range(1, 12)]
    for n, delay in enumerate(delays, 1):
        ceiling = min(2_000, 100 * 2 ** (n - 1))
        assert ceiling // 2 <= delay <= ceiling


# ---------------------------------------------------------------------- seeded randomized runs


def chaos(seed: int, *, head_hashes: bool = True) -> Cluster:
    """Faults from one seed: leaves, chain outages, holder crashes (some right after a send),
    pool drops, reorgs a few blocks deep, nodes that cannot propose; then healed."""
    rng = random.Random(seed)
    c = Cluster(
        ("n1", "n2", "n3"),
        seed=seed,
        head_hashes=head_hashes,
        replacements_max=6,
        block_time_ms=0,
        delay_max_ms=rng.choice([0, 300, 1_200]),
        loss=0.05,
    )
    allowed = set(c.chain.s["submitters"])
    snapshots: list[dict[str, Any]] = []
    while c.now < 90_000:
        roll = rng.random()
        if roll < 0.25:
            c.add_leaves(rng.choice([1, 3, 20, 150]))
        if rng.random() < 0.12:
            c.chain.mine()
            snapshots = [*snapshots[-6:], c.chain.snapshot()]
        if rng.random() < 0.01:
            c.chain.down = not c.chain.down
        if rng.random() < 0.006 and snapshots:
            c.chain.revert(rng.choice(snapshots))  # a reorg a few blocks deep
            snapshots.clear()
        if rng.random() < 0.004:
            c.chain.pool.clear()
        if rng.random() < 0.003:
            c.chain.external_tx(address(rng.choice(sorted(c.nodes))))
        if rng.random() < 0.003:  # the registry refuses everyone for a while: reverts
            c.chain.s["submitters"] = set() if c.chain.s["submitters"] else set(allowed)
        if rng.random() < 0.01:
            victim = c.nodes[rng.choice(sorted(c.nodes))]
            if victim.alive:
                victim.crash_after_send = rng.random() < 0.5
                victim.alive = victim.crash_after_send  # dies at once, or at its next send
            else:
                restart(c, victim, seed)
        if rng.random() < 0.01:
            node = c.nodes[rng.choice(sorted(c.nodes))]
            node.can_propose = not node.can_propose
        c.step(rng.choice([50, 100, 200]))
    # heal: everyone up, the chain up, blocks every second
    c.chain.down = False
    c.chain.s["submitters"] = set(allowed)
    c.delay_max_ms, c.loss = 300, 0.0
    c.block_time_ms = 1_000
    for node in c.nodes.values():
        if not node.alive or node.crash_after_send:
            restart(c, node, seed)
        node.can_propose = True
    c.run_until(c.all_final, 180_000)
    return c


def restart(c: Cluster, node: Node, seed: int) -> None:
    fresh = Node(c, node.name, node.driver.settings, seed * 7 + len(c.trace))
    fresh.broadcasts = node.broadcasts
    c.nodes[node.name] = fresh


@pytest.mark.parametrize(
    ("seed", "head_hashes"), [(s, True) for s in range(24)] + [(s, False) for s in range(6)]
)
def test_randomized_runs_anchor_everything_exactly_once(seed: int, head_hashes: bool) -> None:
    c = chaos(seed, head_hashes=head_hashes)
    check_chain_matches_log(c)
    bs = c.batches()
    k = c.counters
    # Every transaction ever sent was a committed intent (Node.do asserts it), and a batch
    # has exactly one per attempt: nothing doubles.
    assert sum(b.attempt for b in bs) == k.replacements
    assert len(set(c.chain.sent)) <= len(bs) + k.replacements
    assert k.size_triggered + k.interval_triggered == len(bs)
    # Sizes strictly grow, and every leaf is covered.
    sizes = [b.tree_size for b in bs]
    assert sizes == sorted(set(sizes))
    assert c.covered() == c.tree_size
    # The canonical chain holds exactly one successful anchor per batch.
    good = [
        h
        for b in c.chain.s["blocks"]
        for h, status in b.txs
        if status == 1 and h not in c.chain.others
    ]
    assert sorted(good) == sorted(b.tx_hash for b in bs)


def test_a_seed_replays_identically() -> None:
    a, b = chaos(5), chaos(5)
    assert a.trace == b.trace and a.outcomes == b.outcomes
    assert a.state.data == b.state.data


def test_log_entries_are_never_half_applied_by_unknown_batches() -> None:
    log = Log()
    log.lease("a")
    before = dict(log.state.data)
    for entry in (
        ResultProposal("a", 5, b"\x01" * 32, CHAIN_ID, CONTRACT, 1, b"\x02" * 32, 1).to_entry(),
        FinalProposal("a", 5, b"\x02" * 32, 3).to_entry(),
        ReorgProposal("a", 5, b"\x02" * 32).to_entry(),
    ):
        assert log.apply(entry).code == "unknown_batch"
    assert log.state.data == before
    assert log.state.get(batch_key(5)) is None


def test_candidates_racing_for_the_lease_get_one_holder() -> None:
    c = Cluster(("n1", "n2", "n3", "n4"), lease_acquire_jitter_ms=0, delay_max_ms=50)
    c.step()  # all four ask in the same instant (the log applies them a little later)
    c.step()
    asked = [code for kind, code in c.outcomes if kind == "anchor.lease"]
    assert sorted(asked) == ["created", "held", "held", "held"]
    c.add_leaves(5)
    c.run_until(c.all_final)
    assert [n for n in sorted(c.nodes) if c.nodes[n].driver.holding] == [c.holder()]
