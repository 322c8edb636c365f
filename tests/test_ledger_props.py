"""Property tests of the ledger core (hypothesis): random batches of asset, account and
transfer events, with linked chains, two-phase transfers with timeouts and log time moving.

After every batch (``ledgerkit.Book.check``): per ledger the stored totals equal the sums over
its accounts and debits == credits, posted and pending; no flagged account is over its limit.
Then: re-submitting any earlier unlinked transfer never changes its outcome or the state, and
the same events split into other batches at the same log times give the same results and the
same state digest (expiry included)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerkit import T0_MS, Book

from business.ledger import (
    AMOUNT_MAX,
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    LedgerConfig,
    TransferFlags,
)
from business.ledger.model import TRANSIENT_TRANSFER_RESULTS, TransferResult

SETUP: list[Event] = [
    CreateAsset(1, AssetKind.POINT, 0),
    CreateAsset(2, AssetKind.BAAS, 18),
    CreateAccount(1, 1, 1),
    CreateAccount(2, 1, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
    CreateAccount(3, 1, 1, flags=AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
    CreateAccount(
        4, 1, 1, flags=AccountFlags.HISTORY | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    ),
    CreateAccount(5, 2, 1),
    CreateAccount(6, 2, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
    CreateAccount(7, 1, 1, flags=AccountFlags.HISTORY),
]
TRANSFER_FLAGS = [
    0,
    0,
    0,
    int(TransferFlags.LINKED),
    int(TransferFlags.PENDING),
    int(TransferFlags.PENDING | TransferFlags.LINKED),
    int(TransferFlags.POST_PENDING_TRANSFER),
    int(TransferFlags.VOID_PENDING_TRANSFER),
    int(TransferFlags.BALANCING_DEBIT),
    int(TransferFlags.BALANCING_CREDIT),
    int(TransferFlags.PENDING | TransferFlags.BALANCING_DEBIT),
    int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.LINKED),
]

accounts = st.integers(min_value=0, max_value=11)
transfers = st.builds(
    CreateTransfer,
    id=st.integers(min_value=1, max_value=300),
    debit_account_id=accounts,
    credit_account_id=accounts,
    amount=st.sampled_from([0, 1, 2, 5, 40, 100, AMOUNT_MAX]),
    ledger=st.sampled_from([0, 1, 1, 1, 2, 2, 3]),
    code=st.sampled_from([1, 1, 1, 0]),
    flags=st.sampled_from(TRANSFER_FLAGS),
    pending_id=st.one_of(st.just(0), st.integers(min_value=1, max_value=300)),
    timeout=st.sampled_from([0, 0, 1, 2, 4]),
    user_data_128=st.sampled_from([0, 7]),
)
new_accounts = st.builds(
    CreateAccount,
    id=st.integers(min_value=8, max_value=10),
    ledger=st.sampled_from([1, 2, 3]),
    code=st.just(1),
    flags=st.sampled_from([0, 1, 2, 8]),
)
new_assets = st.builds(
    CreateAsset, ledger=st.just(3), kind=st.just(int(AssetKind.TOKEN)), scale=st.just(6)
)
LINKED = int(TransferFlags.LINKED)
PENDING = int(TransferFlags.PENDING)


@st.composite
def valid_transfers(draw: st.DrawFn) -> CreateTransfer:
    """Mostly well-formed transfers between accounts of one ledger (the interesting part:
    limits, two-phase, balancing, chains), so the checks past validation are reached."""
    ledger = draw(st.sampled_from([1, 1, 2]))
    flags = draw(
        st.sampled_from([0, 0, LINKED, PENDING, PENDING, PENDING | LINKED, 16, 32, PENDING | 16])
    )
    # Debits mostly from the accounts without a limit, so that enough of them succeed;
    # pending transfers always (their posts and voids are the interesting part).
    if flags & PENDING:
        pool = [1, 7, 2, 4] if ledger == 1 else [5, 6]
        dr = pool[0] if ledger == 2 else draw(st.sampled_from([1, 7]))
    else:
        pool = [1, 1, 1, 7, 7, 2, 3, 4, 8] if ledger == 1 else [5, 5, 5, 6, 9]
        dr = draw(st.sampled_from(pool))
    cr = draw(st.sampled_from([a for a in pool if a != dr]))
    # Pending transfers take ids 1..12 and posts/voids name those, so resolutions meet them.
    low, high = (1, 12) if flags & PENDING else (41, 300)
    return CreateTransfer(
        id=draw(st.integers(min_value=low, max_value=high)),
        debit_account_id=dr,
        credit_account_id=cr,
        amount=draw(st.sampled_from([1, 2, 5, 40, 100, 1000, AMOUNT_MAX])),
        ledger=ledger,
        code=1,
        flags=flags,
        timeout=draw(st.sampled_from([0, 1, 2, 4])) if flags & PENDING else 0,
        user_data_128=draw(st.sampled_from([0, 7])),
    )


resolutions = st.builds(
    CreateTransfer,
    id=st.integers(min_value=41, max_value=300),
    debit_account_id=st.just(0),
    credit_account_id=st.just(0),
    amount=st.sampled_from([0, 1, 5, AMOUNT_MAX, AMOUNT_MAX]),
    ledger=st.just(0),
    code=st.just(0),
    flags=st.sampled_from([4, 4, 8, 8, 4 | LINKED]),
    pending_id=st.integers(min_value=1, max_value=12),
)
events = st.one_of(
    valid_transfers(),
    valid_transfers(),
    valid_transfers(),
    valid_transfers(),
    resolutions,
    resolutions,
    transfers,
    new_accounts,
    new_assets,
)
# Each batch: how far log time moves first (ms), then its events.
raw_batches = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 1, 400, 1000, 2500]),
        st.lists(events, min_size=0, max_size=16),
    ),
    min_size=1,
    max_size=10,
)


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[int, list[Event]]]:
    """Random batches where most posts and voids name an earlier pending transfer."""
    plan = draw(raw_batches)
    pendings: list[int] = []
    out = []
    for step, batch in plan:
        rewritten: list[Event] = []
        for event in batch:
            if isinstance(event, CreateTransfer):
                if event.flags & (4 | 8) and pendings:
                    event = replace(event, pending_id=draw(st.sampled_from(pendings)))
                elif event.flags & PENDING:
                    pendings.append(event.id)
            rewritten.append(event)
        out.append((step, rewritten))
    return out


PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(plan: list[tuple[int, list[Event]]], config: LedgerConfig) -> tuple[Book, list[Any]]:
    book = Book(config=config)
    assert all(r.succeeded for r in book.apply(SETUP))
    now = T0_MS
    outcomes: list[Any] = []
    for step, batch in plan:
        now += step
        results = book.apply(batch, now)
        outcomes.extend(zip(batch, results, strict=True))
    return book, outcomes


@PROPS
@given(plan=batches())
def test_every_batch_conserves_and_respects_limits(plan: list[tuple[int, list[Event]]]) -> None:
    _, outcomes = _run(plan, LedgerConfig())
    # Book.apply checked the totals and the limits after every batch; check one more thing:
    # a successful transfer never moved more than it asked for (a void of amount 0 means
    # "all of it" and reports the amount it released).
    for event, result in outcomes:
        if isinstance(event, CreateTransfer) and result.code == TransferResult.OK:
            assert (
                result.amount <= event.amount or event.flags & TransferFlags.VOID_PENDING_TRANSFER
            )


@PROPS
@given(plan=batches())
def test_outcomes_are_sticky(plan: list[tuple[int, list[Event]]]) -> None:
    book, outcomes = _run(plan, LedgerConfig())
    by_id: dict[int, set[CreateTransfer]] = {}
    for event, _ in outcomes:
        if isinstance(event, CreateTransfer):
            by_id.setdefault(event.id, set()).add(event)
    state = {k: v for k, v in book.view.data.items() if k != b"lg/m"}
    in_chain = _chain_members(plan)
    for n, (event, first) in enumerate(outcomes):
        if not isinstance(event, CreateTransfer) or in_chain[n]:
            continue  # alone it would be another request: its chain decided its outcome
        if len(by_id[event.id]) > 1 or first.code.value.startswith("linked_event"):
            continue  # another event used the same id: a different request, not a retry
        again = book.apply([event])[0]
        if first.code in (TransferResult.OK, TransferResult.EXISTS):
            assert again.code == TransferResult.EXISTS, (event, first, again)
            assert again.amount == first.amount
        elif first.code in TRANSIENT_TRANSFER_RESULTS:
            assert again.code == TransferResult.ID_ALREADY_FAILED, (event, first, again)
        else:
            assert again.code == first.code, (event, first, again)
        assert {k: v for k, v in book.view.data.items() if k != b"lg/m"} == state


@PROPS
@given(
    plan=batches(), cuts=st.lists(st.integers(min_value=0, max_value=10), min_size=8, max_size=8)
)
def test_the_same_events_in_other_batches_give_the_same_state(
    plan: list[tuple[int, list[Event]]], cuts: list[int]
) -> None:
    config = LedgerConfig(expiry_releases_max=2, expiry_page_ids_max=2)
    whole, outcomes = _run(plan, config)
    split_plan: list[tuple[int, list[Event]]] = []
    for n, (step, batch) in enumerate(plan):
        cut = min(cuts[n % len(cuts)], len(batch))
        # Never split inside a linked chain: that would be other events, not other batches.
        while 0 < cut < len(batch) and _linked(batch[cut - 1]):
            cut -= 1
        split_plan.append((step, batch[:cut]))
        split_plan.append((0, batch[cut:]))
    split, split_outcomes = _run(split_plan, config)
    assert [r for _, r in split_outcomes] == [r for _, r in outcomes]
    assert split.digest() == whole.digest()


def _chain_members(plan: list[tuple[int, list[Event]]]) -> list[bool]:
    """For every event of the plan in order: whether it belongs to a linked chain."""
    members = []
    for _, batch in plan:
        previous_linked = False
        for event in batch:
            members.append(previous_linked or _linked(event))
            previous_linked = _linked(event)
    return members


def _linked(event: Event) -> bool:
    return not isinstance(event, CreateAsset) and bool(event.flags & 1)
