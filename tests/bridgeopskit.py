"""The node's dispatcher at log feature 8 (9 for paymentsopskit.py, which builds on it; 12 for
the tokens) over a real LevelDB (plyvel), for the Bridge-on-the-log tests and the v8 and v12
log-replay fixtures.

Plain helpers (``from bridgeopskit import Node``). :class:`Node` applies entries through the
node's own :class:`~node.consensus.state_machine.Dispatcher` (record index, ledger ops with the
Bridge step, identity; the Merkle log following) and commits each entry's writes in one
LevelDB batch, as the node does. :func:`world` onboards demo-shop (with the Bridge's
liquidity role) and other-shop (without it), links alice and carol to demo-shop and bob to
other-shop. Bridge operations are built by :meth:`Node.bridge_op` with the record id as the
request's op id and, when asked, the users' EIP-712 approvals over
``operation_digest(record id, br bytes)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import plyvel
from bridgekit import policy as bridgekit_policy
from eth_account.signers.local import LocalAccount
from identitykit import (
    CHAIN_ID,
    OPERATOR,
    OTHER_SHOP,
    SHOP,
    T0_MS,
    T0_S,
    address,
    link_entry,
    sign,
    user,
)
from test_index_batch import prop

from business.bridge import (
    DefinePoints,
    Direction,
    FundLiquidity,
    IssuePoints,
    Quote,
    RegisterToken,
    SetPolicy,
    Swap,
    TopUpReserve,
    bridge_state_digest,
    encode_request,
)
from business.bridge.model import Request
from business.identity import (
    BRIDGE_ROLES,
    DEFAULT_ROLES,
    IdentityConfig,
    IdentityMachine,
    Mode,
    PartnerPut,
    PartnerStatus,
    eip712,
)
from business.identity.approvals import SignedApproval, encode_approvals, operation_digest
from business.identity.ids import ledger_number, user_ref, wallet_account_id, wallet_id
from business.ledger.leveldb import LevelDBView
from business.ledger.outcome import OperationOutcome
from business.ledger.views import all_totals, get_account, state_digest
from business.payments.model import PAYMENTS_FEATURE_VERSION
from business.payments.outbox import PaymentsOutbox
from node.consensus.ledger_ops import LedgerOps, Operation
from node.consensus.record_index import BatchOutcome, RecordIndex
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    Applied,
    Dispatcher,
    LogPosition,
    encode_app_entry,
)
from node.ledger_metrics import MeasuredLedgerOps
from node.merkle.log import MerkleLog, MerkleReader
from node.metrics import Metrics

T = Mode.TEST
IDENTITY = IdentityConfig(chain_id=CHAIN_ID)
ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")
BAAS = ledger_number(T, 1)
POINTS = ledger_number(T, 16)  # demo-shop's point ledger (the first partner's index)
OTHER_POINTS = ledger_number(T, 17)
POINTS_LIVE = ledger_number(Mode.LIVE, 16)
# From feature 12 a token takes the next asset index after the two partners' (16, 17).
TOKEN = ledger_number(T, 18)
TOKEN_ADDRESS = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
TOKEN_UNIT = 10**6  # the token's decimals: 6
ALICE_REF = user_ref(SHOP, T, "user-1")
CAROL_REF = user_ref(SHOP, T, "user-3")
BOB_REF = user_ref(OTHER_SHOP, T, "user-1")
BAAS_UNIT = 10**18
DAY_MS = 86_400_000


def rid(n: int) -> bytes:
    return prop(n).record_id


def wallet_of(account: LocalAccount) -> bytes:
    return wallet_id(address(account), T)


def wallet_account(account: LocalAccount, ledger: int) -> int:
    return wallet_account_id(wallet_of(account), T, ledger)


def policy(n: int, **fields: Any) -> SetPolicy:
    """demo-shop's policy on its points (bridgekit's: 1 point = 0.01 BAAS, fee 1%, min
    10^15), as operation ``n``."""
    return bridgekit_policy(op=rid(n), **fields)


class Node:
    """The node's dispatcher over one LevelDB; ``apply`` runs one entry at a log time."""

    def __init__(self, path: Path, metrics: Metrics | None = None, feature_max: int = 8) -> None:
        self.db = plyvel.DB(str(path), create_if_missing=True)
        self.view = LevelDBView(self.db)
        self.ops_machine = LedgerOps(IDENTITY)
        self.measured = None if metrics is None else MeasuredLedgerOps(self.ops_machine, metrics)
        self.dispatcher = Dispatcher(
            [
                RecordIndex(),
                self.measured or self.ops_machine,
                IdentityMachine(IDENTITY),
                PaymentsOutbox(),
            ],
            feature_version_max=max(feature_max, PAYMENTS_FEATURE_VERSION),
            followers=[MerkleLog()],
        )
        self.index = 0
        self.now_ms = T0_MS
        self.payloads: list[bytes] = []
        self.positions: list[LogPosition] = []
        self.applied: list[Applied] = []

    def close(self) -> None:
        self.db.close()

    def apply(self, entry: AppEntry, now_ms: int | None = None) -> Applied:
        self.index += 1
        self.now_ms = self.now_ms + 1 if now_ms is None else now_ms
        payload = encode_app_entry(entry)
        position = LogPosition(self.index, 2, self.now_ms)
        self.payloads.append(payload)
        self.positions.append(position)
        (applied,), writes = self.dispatcher.apply_batch([(position, payload)], self.view)
        self.view.commit(writes)
        self.applied.append(applied)
        return applied

    def ops(self, *operations: Operation, now_ms: int | None = None) -> list[BatchOutcome]:
        applied = self.apply(Operation.batch_entry(operations), now_ms)
        assert applied.outcome.code == "applied", applied.outcome
        return list(applied.outcome.detail["results"])

    def bridge_op(
        self,
        request: Request,
        *,
        partner: bytes | None = SHOP,
        mode: int | None = T,
        refs: tuple[bytes, ...] = (),
        signers: tuple[LocalAccount, ...] = (),
    ) -> Operation:
        n = next(n for n in range(100_000) if rid(n) == request.op)
        raw = encode_request(request)
        approvals = None
        if signers:
            digest = operation_digest(rid(n), raw)
            deadline = T0_S + 30 * 86_400
            approvals = encode_approvals(
                [
                    SignedApproval(
                        address(s),
                        deadline,
                        sign(s, eip712.Approve(T, digest, address(s), deadline)),
                    )
                    for s in signers
                ]
            )
        return Operation(prop(n), None, approvals, partner, mode, refs, bridge=raw)

    def run(self, request: Request, now_ms: int | None = None, **kw: Any) -> OperationOutcome:
        (result,) = self.ops(self.bridge_op(request, **kw), now_ms=now_ms)
        outcome: OperationOutcome = result.detail["outcome"]
        return outcome

    def code(self, request: Request, now_ms: int | None = None, **kw: Any) -> str:
        result = self.run(request, now_ms, **kw).result
        assert result is not None
        return result

    def quote(
        self,
        account: LocalAccount,
        amount_in: int,
        direction: Direction = Direction.IN,
        ledger: int = POINTS,
    ) -> Quote:
        q = self.ops_machine.bridge.quote(
            self.view, SHOP, ledger, wallet_of(account), direction, amount_in, self.now_ms
        )
        assert isinstance(q, Quote), q
        return q

    # --- reads -------------------------------------------------------------------------------

    def balance(self, account: int) -> int:
        found = get_account(self.view, account)
        return 0 if found is None else found.credits_posted - found.debits_posted

    def balanced(self) -> bool:
        return all(t.balanced for t in all_totals(self.view))

    def items(self) -> list[tuple[bytes, bytes]]:
        with self.db.iterator() as it:
            return list(it)

    def ledger_items(self) -> dict[bytes, bytes]:
        """The value state: ledger accounts and transfers, the Bridge's lots and reserves."""
        return {k: v for k, v in self.items() if k.startswith((b"lg/a/", b"br/lt/", b"br/is/"))}

    def digests(self) -> dict[str, str]:
        items = self.items()
        return {
            "state_sha256": hashlib.sha256(
                b"".join(len(k).to_bytes(4, "big") + k + v for k, v in items)
            ).hexdigest(),
            "ledger_digest_hex": state_digest(items).hex(),
            "bridge_digest_hex": bridge_state_digest(items).hex(),
            "merkle_root_hex": MerkleReader(self.view).root().hex(),
        }


def replica_in_batches(node: Node, path: Path, groups: list[int], feature_max: int = 8) -> Node:
    """Another replica at ``path``: ``node``'s committed log applied in batches of the sizes
    ``groups`` names (then the rest at once), as a node applies what commits together."""
    other = Node(path, feature_max=feature_max)
    entries = list(zip(node.positions, node.payloads, strict=True))
    at = 0
    for size in [*groups, len(entries)]:
        chunk = entries[at : at + size]
        if not chunk:
            break
        _, writes = other.dispatcher.apply_batch(chunk, other.view)
        other.view.commit(writes)
        at += len(chunk)
    assert at == len(entries)
    return other


def world(path: Path, feature: int = 8, metrics: Metrics | None = None) -> Node:
    """Features 2..``feature``; demo-shop onboarded with the Bridge's roles, other-shop with
    the v7 defaults only; alice and carol linked to demo-shop, bob to other-shop."""
    node = Node(path, metrics, feature_max=max(8, feature))
    for version in range(2, feature + 1):
        node.apply(AppEntry(FEATURE_ENTRY, {"version": version}))
    # demo-shop gets what onboarding gave at feature 8 (the v8 fixture's bytes)
    for partner, roles in ((SHOP, DEFAULT_ROLES + BRIDGE_ROLES), (OTHER_SHOP, DEFAULT_ROLES)):
        put = PartnerPut(partner, PartnerStatus.ACTIVE, roles, OPERATOR)
        assert node.apply(AppEntry("partner.put", put.to_body())).outcome.code == "ok"
    links = (
        link_entry(ALICE),
        link_entry(CAROL, ref="user-3", nonce=b"\x03" * 32),
        link_entry(BOB, partner=OTHER_SHOP),
    )
    for link in links:
        applied = node.apply(AppEntry("wallet.link", link.to_body()), now_ms=T0_MS + node.index + 1)
        assert applied.outcome.code == "ok", applied.outcome
    return node


def market(node: Node) -> None:
    """demo-shop: points valid 30 days, 1000 issued to alice, liquidity 10,000, a reserve of
    5 BAAS from the test-mode faucet, the default policy."""
    assert node.code(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 0, 30)) == "ok"
    issue = IssuePoints(rid(2), SHOP, POINTS, wallet_account(ALICE, POINTS), 1000)
    assert node.code(issue, refs=(ALICE_REF,)) == "ok"
    assert node.code(FundLiquidity(rid(3), SHOP, POINTS, 10_000)) == "ok"
    assert node.code(TopUpReserve(rid(4), SHOP, BAAS, 5 * BAAS_UNIT)) == "ok"
    assert node.code(policy(5)) == "ok"


def swap_of(n: int, q: Quote) -> Swap:
    """Operation ``n`` executing ``q`` for the user it was quoted to (its digest as approved)."""
    return Swap(rid(n), q.partner, q.ledger, q.wallet, q, q.digest())


def token_policy(n: int, **fields: Any) -> SetPolicy:
    """demo-shop's policy on its token: 1 token (10^6 units) = 1 BAAS, fee 1%, min 10^15."""
    terms: dict[str, Any] = {"ledger": TOKEN, "rate_num": BAAS_UNIT // TOKEN_UNIT, **fields}
    return bridgekit_policy(op=rid(n), **terms)


def token_market(node: Node) -> None:
    """On top of :func:`market` (feature 12): demo-shop registers a 6-decimal token (ledger
    :data:`TOKEN`), funds 1000 tokens of liquidity from the test-mode faucet and sets its
    policy."""
    register = RegisterToken(rid(100), SHOP, BAAS, "SHOPT", 6, TOKEN_ADDRESS)
    assert node.code(register) == "ok"
    assert node.code(FundLiquidity(rid(101), SHOP, TOKEN, 1000 * TOKEN_UNIT)) == "ok"
    assert node.code(token_policy(102)) == "ok"
