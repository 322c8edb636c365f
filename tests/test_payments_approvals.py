"""Payments with identity's real approval check between ``prepare`` and the ledger, as the
ledger-ops apply will run them: a consumer code issued by the user's real key is consumed once
(a second scan is ``code_used``), a code's hash that does not match the secret moves nothing,
an authorisation without the user's signature is refused, and capture, refund and fee (the
merchant's own debits, and a post) need no user approval."""

from __future__ import annotations

from identitykit import CHAIN_ID, OPERATOR, ROLES, SHOP, T0_MS, T0_S, World, code_entry, sign, user
from identitykit import address as address_of

from business.identity import Mode, PartnerPut, PartnerStatus, eip712
from business.identity.approvals import (
    CodeApproval,
    NoDebitRules,
    Operation,
    SignedApproval,
    check_debits,
    debits_of,
    encode_approvals,
    operation_digest,
)
from business.identity.core import open_wallet_account
from business.identity.ids import code_hash
from business.identity.model import ApprovalResult, AssetRef, Role, RoleAccount
from business.ledger import (
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    Ledger,
    LedgerConfig,
    encode_events,
)
from business.ledger.views import get_account
from business.payments import (
    Authorise,
    Capture,
    PaymentResult,
    Payments,
    PaymentsConfig,
    RedeemCode,
    Refund,
    SetFee,
)
from business.payments.core import settlement_account
from node.consensus.state_machine import Overlay

BAAS = 2
ANN = user("ann")
ANN_ADDRESS = address_of(ANN)
SECRET = b"\x42" * 16
OTHER_SECRET = b"\x43" * 16


class Till:
    """Identity, the ledger and payments on one view; :meth:`run` is the ledger-ops order."""

    def __init__(self) -> None:
        self.world = World()
        roles = (*ROLES, RoleAccount(Mode.TEST, Role.SETTLEMENT, AssetRef.BAAS))
        put = PartnerPut(SHOP, PartnerStatus.ACTIVE, roles, OPERATOR)
        assert self.world.apply("partner.put", put.to_body()).code == "ok"
        self.view = self.world.view
        self.payments = Payments(PaymentsConfig(), Ledger(LedgerConfig()))
        self.wallet, writes = open_wallet_account(self.view, Mode.TEST, ANN_ADDRESS, BAAS, T0_MS)
        self.view.apply(writes)
        flags = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
        events: list[Event] = [
            CreateAsset(BAAS, AssetKind.BAAS, 18),
            CreateAccount(7, BAAS, 1),
            CreateAccount(self.wallet, BAAS, 1, flags),
            CreateTransfer(70, 7, self.wallet, 1000, BAAS, 1),
        ]
        results, ledger_writes = self.payments.ledger.apply(events, T0_MS, self.view)
        assert all(r.succeeded for r in results)
        self.view.apply(ledger_writes)

    def run(
        self, request: object, approvals: list[object], partner: bytes = SHOP
    ) -> tuple[str, str]:
        """(approval result, payment result): prepare -> check_debits -> ledger -> settle."""
        prepared = self.payments.prepare(request, T0_MS, self.view)  # type: ignore[arg-type]
        if not prepared.events:
            outcome = self.payments.settle(prepared, [])
            self.view.apply(outcome.writes)
            return "none", outcome.code.value
        digest = operation_digest(prepared.op, encode_events(list(prepared.events)))
        op = Operation(digest, partner, Mode.TEST, debits_of(prepared.events))
        blob = encode_approvals(approvals)  # type: ignore[arg-type]
        verdict, id_writes = check_debits(
            self.view, self.world.config, op, blob, T0_MS, NoDebitRules()
        )
        if verdict != ApprovalResult.OK:
            return verdict.value, "not run"
        layer = Overlay(self.view)
        layer.writes.update(id_writes)
        results, ledger_writes = self.payments.ledger.apply(list(prepared.events), T0_MS, layer)
        layer.writes.update(ledger_writes)
        outcome = self.payments.settle(prepared, results)
        layer.writes.update(outcome.writes)
        self.view.apply(layer.writes.items())
        return verdict.value, outcome.code.value

    def signed(self, request: object) -> list[object]:
        """The user's EIP-712 approval of exactly the operation ``request`` prepares."""
        prepared = self.payments.prepare(request, T0_MS, self.view)  # type: ignore[arg-type]
        digest = operation_digest(prepared.op, encode_events(list(prepared.events)))
        deadline = T0_S + 60
        message = eip712.Approve(int(Mode.TEST), digest, ANN_ADDRESS, deadline)
        return [SignedApproval(ANN_ADDRESS, deadline, sign(ANN, message, CHAIN_ID))]

    def available(self, account: int) -> int:
        a = get_account(self.view, account)
        assert a is not None
        return a.credits_posted - a.debits_posted - a.debits_pending


def op(name: str) -> bytes:
    return name.encode().ljust(32, b".")


def test_a_consumer_code_is_consumed_once_by_the_real_approval_check() -> None:
    till = Till()
    assert till.world.issue(code_entry(ANN, code_hash(SECRET), amount_limit=500)) == "ok"
    scan = RedeemCode(op("scan-1"), SHOP, BAAS, code_hash(SECRET), 300, True, 600)
    assert till.run(scan, [CodeApproval(SECRET)]) == ("ok", "ok")
    assert till.available(till.wallet) == 700
    assert till.available(settlement_account(SHOP, BAAS)) == 300
    again = RedeemCode(op("scan-2"), SHOP, BAAS, code_hash(SECRET), 100, True, 600)
    assert till.run(again, [CodeApproval(SECRET)]) == ("none", "code_used")
    assert till.available(till.wallet) == 700


def test_a_hash_whose_secret_is_another_wallets_code_moves_nothing() -> None:
    """The request names ann's code by its hash; the approval carries bob's secret: the
    check refuses, nothing moves and ann's code stays unused. (Two codes of the *same* wallet
    would pass: the wiring builds the request's hash and the approval from the one scan.)"""
    till = Till()
    assert till.world.issue(code_entry(ANN, code_hash(SECRET))) == "ok"
    assert till.world.issue(code_entry(user("bob"), code_hash(OTHER_SECRET))) == "ok"
    scan = RedeemCode(op("scan"), SHOP, BAAS, code_hash(SECRET), 100, False, 600)
    verdict, result = till.run(scan, [CodeApproval(OTHER_SECRET)])
    assert verdict == "approval_unused" and result == "not run"
    assert till.available(till.wallet) == 1000
    retry = RedeemCode(op("scan-2"), SHOP, BAAS, code_hash(SECRET), 100, False, 600)
    assert till.run(retry, [CodeApproval(SECRET)]) == ("ok", "ok")


def test_an_authorisation_needs_the_users_signature_and_the_merchant_needs_none_after() -> None:
    till = Till()
    assert till.run(SetFee(op("fee"), bytes(16), BAAS, 100, 1), []) == ("none", "ok")
    auth = Authorise(op("pay"), SHOP, BAAS, till.wallet, 400, 600)
    assert till.run(auth, []) == ("approval_missing", "not run")
    assert till.run(auth, till.signed(auth)) == ("ok", "ok")
    assert till.available(till.wallet) == 600
    # The post is exempt, the fee debits the merchant's own settlement account: no approval.
    assert till.run(Capture(op("cap"), SHOP, op("pay"), 250), []) == ("ok", "ok")
    assert till.run(Refund(op("ref"), SHOP, op("pay"), 100), []) == ("ok", "ok")
    assert till.available(till.wallet) == 1000 - 250 + 100
    # Another partner cannot spend the merchant's settlement account.
    assert till.run(Refund(op("ref2"), SHOP, op("pay"), 1), [], partner=b"\x09" * 16)[0] == (
        "debit_account_foreign"
    )
    assert PaymentResult.OK.succeeded
