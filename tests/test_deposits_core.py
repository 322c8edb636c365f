"""The deposit tracker (node/chain/deposits.py) over an in-memory chain: table tests of every
rule and a hypothesis test of random chains with reorganisations.

:class:`MemChain` is a block tree with one canonical branch; :class:`MemReader` serves it to
:func:`poll_round` as the web3 reader would, so the polling round is tested with the core.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from business.identity.ids import Mode, transfer_id, wallet_account_id
from node.chain.deposits import (
    AMOUNT_MAX,
    Alarm,
    AlarmKind,
    BlockHeader,
    CreditDeposit,
    Cursor,
    Decision,
    DepositKey,
    DepositLog,
    DepositSettings,
    DepositTracker,
    RefusalReason,
    Refused,
    deposit_credit,
    deposit_record_id,
    poll_round,
    suspense_account,
    vault_account,
)
from node.errors import ConfigError, InvalidRequest, Overloaded

CHAIN_ID = 31337
VAULT = b"\x0a" * 20
TOKEN = b"\x0b" * 20
OTHER_TOKEN = b"\x0c" * 20
WALLET = b"\x11" * 16
LEDGER = 3  # live BAAS
GENESIS = b"\x00" * 31 + b"\x01"


def make_settings(**overrides: object) -> DepositSettings:
    base = DepositSettings(
        chain_id=CHAIN_ID,
        vault=VAULT,
        mode=Mode.LIVE,
        tokens={TOKEN: LEDGER},
        confirmations=3,
        reorg_depth_max=8,
        pending_deposits_max=64,
        block_logs_max=16,
        log_range_blocks_max=4,
        credit_retry_ticks=5,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class Credited:
    """The replicated state's view: keys whose credit committed."""

    keys: set[DepositKey] = field(default_factory=set)

    def is_credited(self, key: DepositKey) -> bool:
        return key in self.keys


def h(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


@dataclass
class MemChain:
    """A block tree; ``canonical`` lists the hashes of the canonical branch from genesis."""

    headers: dict[bytes, BlockHeader] = field(default_factory=dict)
    logs: dict[bytes, list[DepositLog]] = field(default_factory=dict)
    canonical: list[bytes] = field(default_factory=list)
    made: int = 0

    def __post_init__(self) -> None:
        self.headers[GENESIS] = BlockHeader(0, GENESIS, bytes(32))
        self.logs[GENESIS] = []
        self.canonical = [GENESIS]

    def mine(self, deposits: int = 0, **log_fields: object) -> bytes:
        """A new canonical block on the tip with ``deposits`` fresh deposits."""
        self.made += 1
        parent = self.headers[self.canonical[-1]]
        header = BlockHeader(parent.number + 1, h("block", self.made), parent.hash)
        self.headers[header.hash] = header
        self.logs[header.hash] = [
            replace(
                DepositLog(
                    chain_id=CHAIN_ID,
                    vault=VAULT,
                    block_number=header.number,
                    block_hash=header.hash,
                    tx_hash=h("tx", self.made, i),
                    log_index=i,
                    token=TOKEN,
                    sender=b"\x22" * 20,
                    wallet=WALLET,
                    amount=1000 + i,
                ),
                **log_fields,  # type: ignore[arg-type]
            )
            for i in range(deposits)
        ]
        self.canonical.append(header.hash)
        return header.hash

    def reorg(self, depth: int) -> None:
        """Forget the top ``depth`` canonical blocks (evm_revert): the next mine forks."""
        del self.canonical[len(self.canonical) - depth :]

    def head(self) -> int:
        return len(self.canonical) - 1

    def confirmed_keys(self, confirmations: int) -> set[DepositKey]:
        top = self.head() - confirmations + 1
        return {log.key for hash_ in self.canonical[1 : top + 1] for log in self.logs[hash_]}


@dataclass
class MemReader:
    chain: MemChain

    def head(self) -> int:
        return self.chain.head()

    def header(self, number: int) -> BlockHeader | None:
        if number >= len(self.chain.canonical):
            return None
        return self.chain.headers[self.chain.canonical[number]]

    def deposit_logs(self, first: int, last: int) -> list[DepositLog]:
        return [
            log
            for number in range(first, min(last, self.chain.head()) + 1)
            for log in self.chain.logs[self.chain.canonical[number]]
        ]


def poll_all(tracker: DepositTracker, chain: MemChain) -> list[Decision]:
    decisions: list[Decision] = []
    for _ in range(1000):
        got, caught_up = poll_round(tracker, MemReader(chain))
        decisions += got
        if caught_up:
            return decisions
    raise AssertionError("the tracker never caught up")


def credits(decisions: list[Decision]) -> list[DepositKey]:
    return [d.deposit.key for d in decisions if isinstance(d, CreditDeposit)]


def new_tracker(credited: Credited | None = None, **overrides: object) -> DepositTracker:
    return DepositTracker(make_settings(**overrides), Cursor(0, GENESIS), credited or Credited())


# -- confirmations and exactly once ------------------------------------------------------------


def test_a_deposit_is_credited_once_after_its_confirmations() -> None:
    chain, tracker = MemChain(), new_tracker()
    chain.mine(deposits=2)
    assert credits(poll_all(tracker, chain)) == []
    chain.mine()
    assert credits(poll_all(tracker, chain)) == []  # two blocks: inclusion + one on top
    chain.mine()
    got = credits(poll_all(tracker, chain))
    assert got == [log.key for log in chain.logs[chain.canonical[1]]]
    for _ in range(5):
        chain.mine()
    assert credits(poll_all(tracker, chain)) == []
    assert tracker.stats.credits_asked == 2
    assert tracker.cursor() == Cursor(6, chain.canonical[6])


def test_an_uncommitted_credit_is_asked_again_after_the_retry_ticks_only() -> None:
    credited = Credited()
    chain, tracker = MemChain(), new_tracker(credited)
    chain.mine(deposits=1)
    chain.mine()
    chain.mine()
    (key,) = credits(poll_all(tracker, chain))
    assert all(tracker.tick() == [] for _ in range(4))
    assert credits(tracker.tick()) == [key]  # the fifth tick: still not committed
    credited.keys.add(key)
    assert all(tracker.tick() == [] for _ in range(20))
    assert tracker.stats.credit_retries == 1


def test_a_deposit_the_state_already_credited_is_skipped_on_resume() -> None:
    chain = MemChain()
    chain.mine(deposits=2)
    for _ in range(3):
        chain.mine()
    first, second = (log.key for log in chain.logs[chain.canonical[1]])
    tracker = new_tracker(Credited({first}))
    assert credits(poll_all(tracker, chain)) == [second]


def test_resume_from_a_cursor_reads_only_above_it() -> None:
    chain = MemChain()
    chain.mine(deposits=1)
    for _ in range(3):
        chain.mine()
    chain.mine(deposits=1)
    tracker = new_tracker()
    poll_all(tracker, chain)
    cursor = tracker.cursor()
    assert cursor.number == 3  # block 5 (head) - 3 + 1
    for _ in range(2):
        chain.mine()
    resumed = DepositTracker(make_settings(), cursor, Credited())
    assert resumed.next_block() == 4
    assert credits(poll_all(resumed, chain)) == [chain.logs[chain.canonical[5]][0].key]


def test_the_safe_cursor_stops_below_the_oldest_deposit_not_yet_credited() -> None:
    chain = MemChain()
    chain.mine(deposits=1)  # block 1
    chain.mine()
    chain.mine(deposits=1)  # block 3
    for _ in range(4):
        chain.mine()  # head 7: blocks up to 5 confirmed
    credited = Credited()
    tracker = new_tracker(credited)
    first, second = credits(poll_all(tracker, chain))
    assert tracker.cursor().number == 5
    assert tracker.safe_cursor().number == 0  # block 1's credit is not in the state yet
    credited.keys.add(second)  # committed out of order: still not past block 1
    assert tracker.safe_cursor().number == 0
    credited.keys.add(first)
    assert tracker.safe_cursor() == Cursor(5, chain.canonical[5])
    resumed = DepositTracker(make_settings(), Cursor(0, chain.canonical[0]), Credited({first}))
    assert credits(poll_all(resumed, chain)) == [second]  # resumed from it: nothing skipped


# -- reorganisations ---------------------------------------------------------------------------


def test_a_deposit_reorganised_away_before_its_confirmations_credits_nothing() -> None:
    chain, tracker = MemChain(), new_tracker()
    chain.mine()
    chain.mine(deposits=1)
    chain.mine()
    assert poll_all(tracker, chain) == []
    chain.reorg(2)
    for _ in range(6):
        chain.mine()
    assert poll_all(tracker, chain) == []
    assert tracker.stats.orphaned_unconfirmed == 1
    assert tracker.stats.blocks_orphaned == 2
    assert tracker.tip.hash == chain.canonical[-1]


def test_a_deposit_reorganised_away_after_its_credit_raises_an_alarm_never_a_reversal() -> None:
    chain, tracker = MemChain(), new_tracker()
    chain.mine(deposits=1)
    chain.mine()
    chain.mine()
    (key,) = credits(poll_all(tracker, chain))
    chain.reorg(3)
    for _ in range(4):
        chain.mine()
    decisions = poll_all(tracker, chain)
    alarms = [d for d in decisions if isinstance(d, Alarm)]
    assert [(a.kind, a.deposit.key if a.deposit else None) for a in alarms] == [
        (AlarmKind.CREDITED_DEPOSIT_ORPHANED, key)
    ]
    assert credits(decisions) == []
    assert tracker.stats.alarms == 1


def test_a_reorg_to_a_shorter_chain_is_seen_without_new_blocks() -> None:
    chain, tracker = MemChain(), new_tracker()
    chain.mine()
    chain.mine(deposits=1)
    poll_all(tracker, chain)
    chain.reorg(1)
    chain.mine()  # same height, another block
    assert poll_all(tracker, chain) == []
    assert tracker.stats.orphaned_unconfirmed == 1
    assert tracker.tip.hash == chain.canonical[-1]


def test_a_reorg_deeper_than_the_window_alarms_and_halts() -> None:
    chain, tracker = MemChain(), new_tracker(reorg_depth_max=3, confirmations=2)
    for _ in range(10):
        chain.mine(deposits=1)
    poll_all(tracker, chain)
    chain.reorg(6)
    for _ in range(8):
        chain.mine()
    decisions = poll_all(tracker, chain)
    kinds = [d.kind for d in decisions if isinstance(d, Alarm)]
    assert kinds[-1] == AlarmKind.REORG_TOO_DEEP
    assert tracker.halted
    chain.mine(deposits=1)
    assert poll_all(tracker, chain) == []


def test_a_reorg_racing_the_reads_throws_the_round_away() -> None:
    chain, tracker = MemChain(), new_tracker()
    chain.mine(deposits=1)

    class Racing(MemReader):
        def deposit_logs(self, first: int, last: int) -> list[DepositLog]:
            logs = super().deposit_logs(first, last)
            self.chain.reorg(1)
            self.chain.mine()
            return logs

    assert poll_round(tracker, Racing(chain)) == ([], False)
    assert tracker.next_block() == 1  # nothing taken


# -- refusals and bounds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log_fields", "reason"),
    [
        ({"block_number": 7}, RefusalReason.LOG_NOT_IN_BLOCK),
        ({"chain_id": 1}, RefusalReason.WRONG_CHAIN),
        ({"vault": b"\x0d" * 20}, RefusalReason.WRONG_VAULT),
        ({"token": OTHER_TOKEN}, RefusalReason.TOKEN_NOT_REGISTERED),
        ({"wallet": bytes(16)}, RefusalReason.ZERO_WALLET),
        ({"amount": 0}, RefusalReason.AMOUNT_OUT_OF_RANGE),
        ({"amount": AMOUNT_MAX + 1}, RefusalReason.AMOUNT_OUT_OF_RANGE),
    ],
)
def test_each_bad_log_is_refused_with_its_reason(
    log_fields: dict[str, object], reason: RefusalReason
) -> None:
    tracker = new_tracker()
    header = BlockHeader(1, h("b1"), GENESIS)
    good = DepositLog(CHAIN_ID, VAULT, 1, header.hash, h("tx"), 0, TOKEN, b"\x22" * 20, WALLET, 5)
    bad = replace(good, **log_fields)  # type: ignore[arg-type]
    assert tracker.observe(header, [bad]) == [Refused(reason, bad)]
    for n in range(2, 6):
        assert credits(tracker.observe(BlockHeader(n, h("b", n), tracker.tip.hash), [])) == []
    assert tracker.stats.refused == 1


def test_the_same_log_twice_in_a_block_is_refused_once() -> None:
    tracker = new_tracker()
    header = BlockHeader(1, h("b1"), GENESIS)
    log = DepositLog(CHAIN_ID, VAULT, 1, header.hash, h("tx"), 0, TOKEN, b"\x22" * 20, WALLET, 5)
    assert tracker.observe(header, [log, log]) == [Refused(RefusalReason.DUPLICATE_LOG, log)]


def test_bounds_refuse_a_block_that_would_exceed_them() -> None:
    chain, tracker = MemChain(), new_tracker(pending_deposits_max=3, block_logs_max=2)
    chain.mine(deposits=3)
    with pytest.raises(Overloaded):
        poll_all(tracker, chain)
    chain2, tracker2 = MemChain(), new_tracker(pending_deposits_max=3, block_logs_max=2)
    chain2.mine(deposits=2)
    chain2.mine(deposits=2)
    with pytest.raises(Overloaded):
        poll_all(tracker2, chain2)
    assert tracker2.next_block() == 2  # the first block was taken, the second was not
    assert tracker2.stats.seen == 2
    # A replacement at a held height is bounded before the old block is dropped.
    chain3, tracker3 = MemChain(), new_tracker(pending_deposits_max=3, block_logs_max=3)
    chain3.mine(deposits=1)
    chain3.mine(deposits=1)
    poll_all(tracker3, chain3)
    tip = tracker3.tip
    chain3.reorg(1)
    chain3.mine(deposits=3)
    with pytest.raises(Overloaded):
        poll_all(tracker3, chain3)
    assert tracker3.tip == tip and tracker3.stats.blocks_orphaned == 0


def test_a_block_that_skips_heights_is_a_caller_error() -> None:
    tracker = new_tracker()
    with pytest.raises(InvalidRequest):
        tracker.observe(BlockHeader(5, h("b5"), h("b4")), [])


@pytest.mark.parametrize(
    "overrides",
    [
        {"chain_id": 0},
        {"vault": b"\x01"},
        {"tokens": {}},
        {"tokens": {TOKEN: 2}},  # a test-mode ledger for a live vault
        {"confirmations": 0},
        {"reorg_depth_max": 2},  # below confirmations
        {"pending_deposits_max": 0},
        {"log_range_blocks_max": -1},
    ],
)
def test_settings_are_validated(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_settings(**overrides).validate()


# -- the credit operation ----------------------------------------------------------------------


def test_the_credit_goes_to_the_wallet_or_to_suspense_under_a_domain_separated_id() -> None:
    s = make_settings()
    log = DepositLog(CHAIN_ID, VAULT, 1, h("b"), h("tx"), 4, TOKEN, b"\x22" * 20, WALLET, 5)
    known = deposit_credit(s, log, wallet_known=True)
    unknown = deposit_credit(s, log, wallet_known=False)
    assert known.record_id == unknown.record_id == deposit_record_id(log.key)
    assert known.transfer_id == transfer_id(known.record_id, 0)
    assert known.credit_account_id == wallet_account_id(WALLET, Mode.LIVE, LEDGER)
    assert unknown.credit_account_id == suspense_account(Mode.LIVE, LEDGER) and unknown.suspense
    assert known.debit_account_id == vault_account(Mode.LIVE, LEDGER)
    assert len({known.credit_account_id, unknown.credit_account_id, known.debit_account_id}) == 3
    ids = {
        deposit_record_id(DepositKey(CHAIN_ID, h("tx"), 4)),
        deposit_record_id(DepositKey(CHAIN_ID + 1, h("tx"), 4)),
        deposit_record_id(DepositKey(CHAIN_ID, h("tx2"), 4)),
        deposit_record_id(DepositKey(CHAIN_ID, h("tx"), 5)),
    }
    assert len(ids) == 4
    with pytest.raises(InvalidRequest):
        deposit_credit(s, replace(log, token=OTHER_TOKEN), wallet_known=True)


# -- random chains with reorganisations --------------------------------------------------------

# One step: ("mine", deposits), ("burst", blocks of one deposit each), ("reorg", depth) or
# ("commit", 0), each followed by a poll when its flag is set (so credits and reorgs meet).
steps = st.lists(
    st.tuples(
        st.one_of(
            st.tuples(st.just("mine"), st.integers(0, 3)),
            st.tuples(st.just("burst"), st.integers(1, 4)),
            st.tuples(st.just("reorg"), st.integers(1, 6)),
            st.tuples(st.just("commit"), st.just(0)),
        ),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, confirmations=st.integers(1, 4))
def test_random_chains_credit_exactly_the_confirmed_canonical_deposits(
    steps: list[tuple[tuple[str, int], bool]], confirmations: int
) -> None:
    """Reorgs up to 6 deep within a window of 8: every deposit confirmed on the final
    canonical chain is credited, once; every credit not on the final canonical chain (and no
    other) raised one alarm."""
    chain = MemChain()
    credited = Credited()
    tracker = new_tracker(credited, confirmations=confirmations, pending_deposits_max=10_000)
    asked: list[DepositKey] = []
    alarmed: list[DepositKey] = []

    def run(decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, CreditDeposit):
                asked.append(d.deposit.key)
            elif isinstance(d, Alarm):
                assert d.kind == AlarmKind.CREDITED_DEPOSIT_ORPHANED and d.deposit is not None
                alarmed.append(d.deposit.key)

    for (op, arg), poll in steps:
        if op == "mine":
            chain.mine(deposits=arg)
        elif op == "burst":
            for _ in range(arg):
                chain.mine(deposits=1)
        elif op == "reorg":
            # Keep the fork point inside the tracker's window (deeper: the table test above).
            depth = min(arg, chain.head() - tracker.base_number)
            if depth > 0:
                chain.reorg(depth)
                chain.mine()  # the fork: a fresh block at the height forgotten first
        else:
            credited.keys.update(asked)
            run(tracker.tick())
        if poll:
            run(poll_all(tracker, chain))
    run(poll_all(tracker, chain))
    assert len(asked) == len(set(asked)), "a deposit was asked to be credited twice"
    final = chain.confirmed_keys(confirmations)
    canonical = {log.key for b in chain.canonical for log in chain.logs[b]}
    assert final <= set(asked)
    # A credit still on the canonical chain stands even if a reorg made it shallower again.
    assert set(asked) - canonical == set(alarmed)
    assert len(alarmed) == len(set(alarmed))
    assert tracker.tip.hash == chain.canonical[-1]
