"""Debit approvals: every refusal code in precedence, one-time codes consumed once, the rule
hook, and the property that no approval lets one wallet debit another's account."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from identitykit import (
    OTHER_SHOP,
    SHOP,
    T0_MS,
    T0_S,
    World,
    address,
    code_entry,
    sign,
    user,
)

from business.identity import (
    ApprovalResult,
    CodeApproval,
    Debit,
    DebitRule,
    Mode,
    NoDebitRules,
    Operation,
    RuleClaim,
    SignedApproval,
    check_debits,
    debits_of,
    eip712,
    encode_approvals,
    open_wallet_account,
    operation_digest,
    platform_account,
)
from business.identity.approvals import NO_APPROVALS_DIGEST
from business.identity.ids import code_hash, ledger_number, operation_id, partner_account_id
from business.identity.model import ZERO16
from business.ledger import CreateTransfer, TransferFlags
from node.consensus.state_machine import StateView
from node.errors import InvalidRequest, InvariantViolation

R = ApprovalResult
ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")
BAAS, BAAS_LIVE = 2, 3
POINTS = ledger_number(Mode.TEST, 16)  # demo-shop's points in test mode
PLATFORM_FAUCET = 77


def _world() -> tuple[World, dict[tuple[str, int], int]]:
    w = World()
    assert w.onboard(SHOP).code == "ok" and w.onboard(OTHER_SHOP).code == "ok"
    accounts = {}
    for name, u in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)):
        for ledger in (BAAS, POINTS, BAAS_LIVE):
            mode = Mode(ledger & 1)
            account, writes = open_wallet_account(w.view, mode, address(u), ledger, T0_MS)
            w.view.apply(writes)
            accounts[(name, ledger)] = account
    w.view.apply([platform_account(Mode.TEST, BAAS, PLATFORM_FAUCET)])
    return w, accounts


def _partner_account(partner: bytes, role: str, ledger: int = BAAS) -> int:
    return partner_account_id(partner, Mode(ledger & 1), role, ledger)


def _op(
    *debits: Debit, key: str = "k1", partner: bytes = SHOP, mode: Mode = Mode.TEST
) -> Operation:
    record = operation_id(partner if partner != ZERO16 else b"\x01" * 16, mode, "transfer", key)
    return Operation(operation_digest(record, repr(debits).encode()), partner, mode, debits)


def _approve(account, op: Operation, deadline: int = T0_S + 60, wallet=None) -> SignedApproval:  # type: ignore[no-untyped-def]
    wallet = wallet or address(account)
    message = eip712.Approve(op.mode, op.digest, wallet, deadline)
    return SignedApproval(wallet, deadline, sign(account, message))


class Caps:
    """A stand-in for the Bridge's per-issuance state: a fixed cap per reference."""

    def __init__(self, caps: dict[bytes, int]) -> None:
        self.caps = caps

    def cap(
        self, view: StateView, rule: DebitRule, reference: bytes, account_id: int, now_ms: int
    ) -> int:
        return self.caps.get(reference, 0)


def _check(w: World, op: Operation, items: list, now_ms: int = T0_MS, rules=None):  # type: ignore[no-untyped-def,type-arg]
    return check_debits(
        w.view, w.config, op, encode_approvals(items), now_ms, rules or NoDebitRules()
    )


def test_approval_result_codes_in_precedence() -> None:
    w, acc = _world()
    reserve = _partner_account(SHOP, "reserve")
    issuance = _partner_account(SHOP, "issuance", POINTS)
    alice = Debit(acc[("alice", BAAS)], reserve, 10)
    op = _op(alice)
    good = _approve(ALICE, op)
    assert _check(w, op, [good]) == (R.OK, ())
    assert _check(w, _op(Debit(reserve, acc[("alice", BAAS)], 5)), []) == (R.OK, ())  # a credit
    assert _check(w, _op(Debit(PLATFORM_FAUCET, reserve, 5), partner=ZERO16), [])[0] == R.OK
    # approvals_malformed
    assert check_debits(w.view, w.config, op, b"\xc1junk", T0_MS, NoDebitRules())[0] == (
        R.APPROVALS_MALFORMED
    )
    too_many = [good] * (w.config.approvals_max + 1)
    assert _check(w, op, too_many)[0] == R.APPROVALS_MALFORMED
    assert _check(w, op, [CodeApproval(b"short")])[0] == R.APPROVALS_MALFORMED
    # debit_account_unowned, before debit_account_foreign
    stranger = Debit(12345, reserve, 1)
    foreign = Debit(_partner_account(OTHER_SHOP, "reserve"), reserve, 1)
    assert _check(w, _op(foreign, stranger), [])[0] == R.DEBIT_ACCOUNT_UNOWNED
    assert _check(w, _op(foreign), [])[0] == R.DEBIT_ACCOUNT_FOREIGN
    live_alice = Debit(acc[("alice", BAAS_LIVE)], reserve, 1)
    assert _check(w, _op(live_alice), [_approve(ALICE, _op(live_alice))])[0] == (
        R.DEBIT_ACCOUNT_FOREIGN  # her live account in a test operation
    )
    assert _check(w, _op(Debit(PLATFORM_FAUCET, reserve, 5)), [])[0] == R.DEBIT_ACCOUNT_FOREIGN
    # rule_not_applicable: a reversal must credit the operating partner's issuance account
    claim = RuleClaim(DebitRule.REVERSAL, b"iss-1")
    to_reserve = Debit(acc[("alice", POINTS)], reserve, 5, claim)
    assert _check(w, _op(to_reserve, foreign), [])[0] == R.DEBIT_ACCOUNT_FOREIGN
    assert _check(w, _op(to_reserve), [])[0] == R.RULE_NOT_APPLICABLE
    other_issuance = _partner_account(OTHER_SHOP, "issuance", ledger_number(Mode.TEST, 17))
    assert _check(w, _op(Debit(acc[("alice", POINTS)], other_issuance, 5, claim)), [])[0] == (
        R.RULE_NOT_APPLICABLE
    )
    expiry_claim = RuleClaim(DebitRule.POINT_EXPIRY, b"lot-1")
    assert _check(w, _op(Debit(acc[("alice", POINTS)], issuance, 5, expiry_claim)), [])[0] == (
        R.RULE_NOT_APPLICABLE  # expired points go to breakage, not issuance
    )
    # rule_cap_exceeded: no Bridge state yet -> cap 0; with a cap, the sum counts
    reversal = Debit(acc[("alice", POINTS)], issuance, 60, claim)
    assert _check(w, _op(reversal), [])[0] == R.RULE_CAP_EXCEEDED
    caps = Caps({b"iss-1": 100})
    assert _check(w, _op(reversal), [], rules=caps)[0] == R.OK
    assert _check(w, _op(reversal, reversal), [], rules=caps)[0] == R.RULE_CAP_EXCEEDED
    # approval_signature_invalid, approval_signer_mismatch, approval_expired
    bad_sig = SignedApproval(address(ALICE), T0_S + 60, bytes(65))
    expired = _approve(ALICE, op, deadline=T0_S)
    mismatch = _approve(BOB, op, wallet=address(ALICE))
    assert _check(w, op, [expired, mismatch, bad_sig])[0] == R.APPROVAL_SIGNATURE_INVALID
    assert _check(w, op, [expired, mismatch])[0] == R.APPROVAL_SIGNER_MISMATCH
    replay = _approve(ALICE, _op(alice, key="another-operation"))
    assert _check(w, op, [SignedApproval(replay.wallet, replay.deadline, replay.signature)])[0] == (
        R.APPROVAL_SIGNER_MISMATCH
    )  # an approval of another operation
    live = _approve(ALICE, _op(alice, mode=Mode.LIVE))
    assert _check(w, op, [SignedApproval(live.wallet, live.deadline, live.signature)])[0] == (
        R.APPROVAL_SIGNER_MISMATCH  # an approval made in the other mode
    )
    assert _check(w, op, [expired])[0] == R.APPROVAL_EXPIRED
    # approval_unused: an uninvolved wallet, or two approvals of one wallet
    assert _check(w, op, [good, _approve(BOB, op)])[0] == R.APPROVAL_UNUSED
    assert _check(w, op, [good, good])[0] == R.APPROVAL_UNUSED
    # approval_missing
    assert _check(w, op, [])[0] == R.APPROVAL_MISSING
    both = _op(alice, Debit(acc[("bob", BAAS)], reserve, 1))
    assert _check(w, both, [_approve(ALICE, both)])[0] == R.APPROVAL_MISSING
    assert _check(w, both, [_approve(ALICE, both), _approve(BOB, both)])[0] == R.OK
    assert [c.value for c in ApprovalResult] == [
        "ok",
        "approvals_malformed",
        "debit_account_unowned",
        "debit_account_foreign",
        "rule_not_applicable",
        "rule_cap_exceeded",
        "approval_signature_invalid",
        "approval_signer_mismatch",
        "approval_expired",
        "code_unknown",
        "code_wrong_mode",
        "code_used",
        "code_expired",
        "code_ledger_mismatch",
        "code_limit_exceeded",
        "approval_unused",
        "approval_missing",
    ]


def test_one_time_codes_are_consumed_once_within_their_limit_ledger_and_mode() -> None:
    w, acc = _world()
    reserve = _partner_account(SHOP, "reserve")
    code, live_code, points_code = b"A" * 16, b"L" * 16, b"P" * 16
    assert w.issue(code_entry(ALICE, code_hash(code), amount_limit=100)) == "ok"
    live = code_entry(ALICE, code_hash(live_code), mode=Mode.LIVE, ledger=BAAS_LIVE)
    assert w.issue(live) == "ok"
    assert w.issue(code_entry(ALICE, code_hash(points_code), ledger=POINTS)) == "ok"
    spend = _op(Debit(acc[("alice", BAAS)], reserve, 100))
    assert _check(w, spend, [CodeApproval(b"U" * 16)])[0] == R.CODE_UNKNOWN
    assert _check(w, spend, [CodeApproval(live_code)])[0] == R.CODE_WRONG_MODE
    assert _check(w, spend, [CodeApproval(code)], now_ms=(T0_S + 600) * 1000)[0] == (R.CODE_EXPIRED)
    assert _check(w, spend, [CodeApproval(points_code)])[0] == R.CODE_LEDGER_MISMATCH
    mixed = _op(Debit(acc[("alice", BAAS)], reserve, 1), Debit(acc[("alice", POINTS)], reserve, 1))
    assert _check(w, mixed, [CodeApproval(code)])[0] == R.CODE_LEDGER_MISMATCH
    over = _op(Debit(acc[("alice", BAAS)], reserve, 60), Debit(acc[("alice", BAAS)], reserve, 41))
    assert _check(w, over, [CodeApproval(code)])[0] == R.CODE_LIMIT_EXCEEDED
    bobs = _op(Debit(acc[("bob", BAAS)], reserve, 1))
    assert _check(w, bobs, [CodeApproval(code)])[0] == R.APPROVAL_UNUSED  # alice's code
    assert _check(w, bobs, [])[0] == R.APPROVAL_MISSING
    code_result, writes = _check(w, spend, [CodeApproval(code)])
    assert code_result == R.OK and len(writes) == 1
    w.view.apply(writes)
    assert _check(w, spend, [CodeApproval(code)]) == (R.OK, ())  # this operation, again
    again = _op(Debit(acc[("alice", BAAS)], reserve, 1), key="k2")
    assert _check(w, again, [CodeApproval(code)])[0] == R.CODE_USED


def test_posts_and_voids_are_not_debits_and_rules_need_a_debit() -> None:
    pending = CreateTransfer(1, 10, 20, 5, BAAS, 1, flags=TransferFlags.PENDING)
    post = CreateTransfer(2, 0, 0, 5, 0, 0, flags=TransferFlags.POST_PENDING_TRANSFER, pending_id=1)
    void = CreateTransfer(3, 0, 0, 0, 0, 0, flags=TransferFlags.VOID_PENDING_TRANSFER, pending_id=1)
    assert debits_of([pending, post, void]) == (Debit(10, 20, 5),)
    claim = RuleClaim(DebitRule.REVERSAL, b"i")
    assert debits_of([pending], {0: claim}) == (Debit(10, 20, 5, claim),)
    with pytest.raises(InvalidRequest):
        debits_of([pending, post], {1: claim})


@dataclass(frozen=True)
class _Case:
    debits: tuple[tuple[int, int], ...]  # (wallet index, amount)
    approvals: tuple[tuple[int, int], ...]  # (signer index, the wallet index it names)


USERS = (ALICE, BOB, CAROL)
_cases = st.builds(
    _Case,
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 10**20)), min_size=1, max_size=4).map(
        tuple
    ),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=3).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(_cases)
def test_no_approval_lets_one_wallet_debit_another_wallets_account(case: _Case) -> None:
    w, acc = _world()
    names = ("alice", "bob", "carol")
    reserve = _partner_account(SHOP, "reserve")
    op = _op(*(Debit(acc[(names[i], BAAS)], reserve, amount) for i, amount in case.debits))
    items = [_approve(USERS[i], op, wallet=address(USERS[j])) for i, j in case.approvals]
    code, _ = _check(w, op, items)
    debited = {i for i, _ in case.debits}
    genuine = {i for i, j in case.approvals if i == j}
    named = [j for _, j in case.approvals]
    honest = len(genuine) == len(case.approvals) == len(set(named))
    assert (code == R.OK) == (honest and genuine == debited)
    if not debited <= genuine:
        assert code != R.OK  # the safety half: a wallet is never debited without its own key


def test_an_operation_without_approvals_needs_no_digest_and_one_with_them_does() -> None:
    """The apply computes the digest only when the operation carries approvals (ledger_ops.py):
    without any the answer is the one the full check gives, and with some a missing digest is a
    broken invariant, never a signature checked against nothing."""
    w, acc = _world()
    reserve = _partner_account(SHOP, "reserve")
    alice = Debit(acc[("alice", BAAS)], reserve, 10)
    for debits, expected in (((alice,), R.APPROVAL_MISSING), ((Debit(reserve, 1, 5),), R.OK)):
        op = _op(*debits)
        undigested = Operation(NO_APPROVALS_DIGEST, op.partner, op.mode, op.debits)
        assert _check(w, undigested, []) == _check(w, op, []) == (expected, ())
    op = _op(alice)
    undigested = Operation(NO_APPROVALS_DIGEST, op.partner, op.mode, op.debits)
    with pytest.raises(InvariantViolation, match="digest"):
        _check(w, undigested, [_approve(ALICE, op)])
