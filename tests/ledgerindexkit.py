"""Shared setup of the feature-13 tests (the index by scope tag, codes spent on presentation)
on a real LevelDB: bridgeopskit's node and world plus raw ``ev`` operations of demo-shop and
other-shop, funded from the test-mode faucet.

Plain helpers (``from ledgerindexkit import ...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridgeopskit import BAAS, Node, rid
from identitykit import OTHER_SHOP, SHOP
from test_index_batch import prop

from business.identity.ids import Mode, account_id, partner_account_id, transfer_id
from business.identity.scope import PLATFORM
from business.ledger import AccountFlags, CreateAccount, CreateTransfer, Event, encode_events
from business.ledger.index import TAG_ACCOUNTS_PREFIX, TAG_TRANSFERS_PREFIX
from gateway.ledger_routes import scope_of
from node.consensus.ledger_ops import Operation
from node.consensus.state_machine import FEATURE_ENTRY, AppEntry

T = Mode.TEST
TAG, OTHER_TAG = scope_of("demo-shop", T), scope_of("other-shop", T)
RESERVE = partner_account_id(SHOP, T, "reserve", BAAS)
OTHER_RESERVE = partner_account_id(OTHER_SHOP, T, "reserve", BAAS)
FAUCET_RID = 900
FUNDS = 10**9


def op(
    n: int,
    events: Sequence[Event],
    *,
    partner: bytes = SHOP,
    approvals: bytes | None = None,
    refs: tuple[bytes, ...] = (),
) -> Operation:
    return Operation(prop(n), encode_events(list(events)), approvals, partner, T, refs)


def results(node: Node, *operations: Operation) -> list[list[str]]:
    """Each operation's event results (a refusal's code on every event)."""
    return [[e.result for e in r.detail["outcome"].events] for r in node.ops(*operations)]


def fund(node: Node) -> None:
    """The platform's faucet grants both shops' reserves (opened on first use)."""
    faucet = account_id(rid(FAUCET_RID), 0)
    events: list[Event] = [
        CreateAccount(faucet, BAAS, 9),
        CreateTransfer(transfer_id(rid(FAUCET_RID), 1), faucet, RESERVE, FUNDS, BAAS, 1),
        CreateTransfer(transfer_id(rid(FAUCET_RID), 2), faucet, OTHER_RESERVE, FUNDS, BAAS, 1),
    ]
    (done,) = results(node, op(FAUCET_RID, events, partner=PLATFORM))
    assert set(done) == {"ok"}, done


def open_accounts(node: Node, n: int, count: int, partner: bytes = SHOP) -> list[int]:
    """``count`` BAAS accounts of ``partner`` tagged with its scope, in operation ``n``."""
    tag = TAG if partner == SHOP else OTHER_TAG
    flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    events = [CreateAccount(account_id(rid(n), i), BAAS, 1, flags, tag) for i in range(count)]
    (done,) = results(node, op(n, events, partner=partner))
    assert done == ["ok"] * count, done
    return [e.id for e in events]


def pay(
    n: int, debit: int, credit: int, amount: int, partner: bytes = SHOP, **kw: Any
) -> Operation:
    """One tagged BAAS transfer of ``partner`` as operation ``n``."""
    tag = TAG if partner == SHOP else OTHER_TAG
    move = CreateTransfer(transfer_id(rid(n), 0), debit, credit, amount, BAAS, 1,
                          user_data_128=kw.pop("tag", tag), **kw)  # fmt: skip
    return op(n, [move], partner=partner)


def indexed(node: Node, prefix: bytes, tag: int) -> list[int]:
    """The ids the index holds under ``tag``, in key order."""
    start = prefix + tag.to_bytes(16, "big")
    return [int.from_bytes(k[-16:], "big") for k, _ in node.items() if k.startswith(start)]


def indexed_accounts(node: Node, tag: int = TAG) -> list[int]:
    return indexed(node, TAG_ACCOUNTS_PREFIX, tag)


def indexed_transfers(node: Node, tag: int = TAG) -> list[int]:
    return indexed(node, TAG_TRANSFERS_PREFIX, tag)


def upgrade_to_13(node: Node) -> None:
    """The node's code upgraded in place (it now understands feature 13), then the log
    enables features 12 and 13, as a cluster's leader does once every member runs it."""
    node.dispatcher.feature_version_max = 13
    for version in (12, 13):
        node.apply(AppEntry(FEATURE_ENTRY, {"version": version}))
