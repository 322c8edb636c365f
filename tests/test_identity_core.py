"""The identity state machine: every result code in precedence, stickiness, the audit trail,
and no names or partner user ids in the state."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from identitykit import (
    CHAIN_ID,
    OPERATOR,
    OTHER_SHOP,
    ROLES,
    SHOP,
    T0_MS,
    T0_S,
    World,
    address,
    code_entry,
    link_entry,
    partner_actor,
    user,
)

from business.identity import (
    Actor,
    ActorKind,
    AssetRef,
    CodeResult,
    IdentityConfig,
    LinkResult,
    Mode,
    OwnerKind,
    PartnerPut,
    PartnerResult,
    PartnerStatus,
    Role,
    RoleAccount,
    UnlinkEntry,
    get_owner,
    get_partner,
    linked_wallet,
    list_audit,
    open_wallet_account,
)
from business.identity.ids import code_hash, ledger_number, partner_account_id, user_ref
from business.identity.model import META_KEY, PLATFORM_SCOPE
from node.errors import ConfigError, InvalidRequest

ALICE, BOB = user("alice"), user("bob")
L = LinkResult


def _world(*partners: bytes) -> World:
    w = World()
    for p in partners:
        assert w.onboard(p).code == "ok"
    return w


# --- partners ---------------------------------------------------------------------------------


def test_onboarding_allocates_a_point_ledger_per_mode_and_records_role_owners() -> None:
    w = World()
    first = w.onboard(SHOP)
    second = w.onboard(OTHER_SHOP)
    assert (first.detail["asset_index"], second.detail["asset_index"]) == (16, 17)
    status, _, roles = get_partner(w.view, SHOP) or (None, 0, ())
    assert status == PartnerStatus.ACTIVE and roles == tuple(
        sorted(ROLES, key=lambda r: (r.mode, r.role))
    )
    ledgers = set()
    for mode, role, ledger, account in first.detail["accounts"]:
        owner = get_owner(w.view, int.from_bytes(account, "big"))
        assert owner is not None and owner.kind == OwnerKind.PARTNER and owner.owner == SHOP
        assert owner.mode == mode and owner.ledger == ledger
        assert int.from_bytes(account, "big") == partner_account_id(SHOP, Mode(mode), role, ledger)
        ledgers.add((mode, role, ledger))
    assert (Mode.TEST, "issuance", ledger_number(Mode.TEST, 16)) in ledgers
    assert (Mode.LIVE, "issuance", ledger_number(Mode.LIVE, 16)) in ledgers
    assert (Mode.LIVE, "reserve", 3) in ledgers and (Mode.TEST, "reserve", 2) in ledgers


def _put(
    w: World, partner: bytes, *, status=PartnerStatus.ACTIVE, roles=ROLES, actor=OPERATOR
) -> str:  # type: ignore[no-untyped-def]
    return w.apply("partner.put", PartnerPut(partner, status, roles, actor).to_body()).code


def test_partner_result_codes_in_precedence() -> None:
    w = World()
    extra = (*ROLES, RoleAccount(Mode.LIVE, Role.SETTLEMENT, AssetRef.BAAS))
    body = PartnerPut(SHOP, PartnerStatus.ACTIVE, ROLES, OPERATOR).to_body()
    assert w.apply("partner.put", {**body, "status": 9}).code == "malformed"
    assert w.apply("partner.put", {**body, "roles": [[0, 1, 1], [0, 1, 2]]}).code == "malformed"
    # malformed before actor_not_allowed: a user actor with a bad status
    user_actor = Actor(ActorKind.USER, b"\x01" * 16).to_body()
    assert w.apply("partner.put", {**body, "status": 9, "actor": user_actor}).code == "malformed"
    assert _put(w, SHOP, actor=partner_actor(SHOP)) == "actor_not_allowed"  # cannot onboard itself
    assert _put(w, SHOP, actor=Actor(ActorKind.USER, b"\x01" * 16)) == "actor_not_allowed"
    assert _put(w, SHOP) == "ok"
    assert _put(w, SHOP) == "exists"
    assert _put(w, SHOP, roles=ROLES[1:]) == "role_must_not_be_removed"
    # actor_not_allowed before role_must_not_be_removed
    assert _put(w, SHOP, roles=ROLES[1:], actor=partner_actor(OTHER_SHOP)) == "actor_not_allowed"
    assert _put(w, SHOP, status=PartnerStatus.SUSPENDED, actor=partner_actor(SHOP)) == (
        "actor_not_allowed"
    )
    assert _put(w, SHOP, roles=extra, actor=partner_actor(SHOP)) == "ok"  # may add roles
    assert _put(w, SHOP, roles=extra, status=PartnerStatus.SUSPENDED) == "ok"
    w.view.apply([(META_KEY, b"\x01" + (1 << 31).to_bytes(4, "big"))])
    assert _put(w, OTHER_SHOP) == "assets_exhausted"
    assert [c.value for c in PartnerResult] == [
        "ok",
        "malformed",
        "actor_not_allowed",
        "role_must_not_be_removed",
        "assets_exhausted",
        "exists",
    ]


def test_config_bounds_are_validated() -> None:
    with pytest.raises(ConfigError):
        IdentityConfig(approvals_max=0)
    with pytest.raises(ConfigError):
        IdentityConfig(chain_id=True)  # type: ignore[arg-type]


# --- links ------------------------------------------------------------------------------------


def test_link_result_codes_in_precedence() -> None:
    w = _world(SHOP, OTHER_SHOP)
    ok = link_entry(ALICE)
    body = ok.to_body()
    assert w.apply("wallet.link", {**body, "wallet": b"short"}).code == "malformed"
    assert w.apply("wallet.link", {**body, "mode": 5}).code == "malformed"
    foreign = dataclasses.replace(ok, actor=partner_actor(OTHER_SHOP), signature=b"\x00" * 65)
    assert w.link(foreign) == "actor_not_allowed"  # before signature_invalid
    assert w.link(dataclasses.replace(ok, signature=b"\x00" * 65)) == "signature_invalid"
    assert w.link(dataclasses.replace(ok, signature=b"\x01" * 3)) == "signature_invalid"
    # signer_mismatch: another key, other fields, another chain id, another mode
    assert w.link(dataclasses.replace(ok, wallet=address(BOB))) == "signer_mismatch"
    assert w.link(link_entry(ALICE, signed={"deadline": T0_S + 601})) == "signer_mismatch"
    assert w.link(link_entry(ALICE, signed={"mode": Mode.LIVE})) == "signer_mismatch"
    assert w.link(link_entry(ALICE, signed={"partner": OTHER_SHOP})) == "signer_mismatch"
    assert w.link(link_entry(ALICE, chain_id=1)) == "signer_mismatch"
    assert w.link(link_entry(ALICE, unlink=True)) == "signer_mismatch"  # an Unlink signature
    assert linked_wallet(w.view, SHOP, Mode.TEST, ok.user_ref) is None  # nothing stored yet
    # deadline checks (each with a fresh nonce)
    n = iter(bytes((i,)) * 32 for i in range(10, 100))
    assert w.link(link_entry(ALICE, nonce=next(n), deadline=T0_S)) == "deadline_expired"
    far = T0_S + w.config.link_deadline_s_max + 1
    assert w.link(link_entry(ALICE, nonce=next(n), deadline=far)) == "deadline_too_far"
    # deadline_expired before partner_not_found
    ghost = b"\x55" * 16
    assert w.link(link_entry(ALICE, partner=ghost, nonce=next(n), deadline=T0_S)) == (
        "deadline_expired"
    )
    assert w.link(link_entry(ALICE, partner=ghost, nonce=next(n))) == "partner_not_found"
    assert w.link(ok) == "ok"
    assert linked_wallet(w.view, SHOP, Mode.TEST, ok.user_ref) == address(ALICE)
    assert w.link(ok) == "exists"  # the retry: sticky
    assert w.link(link_entry(ALICE, nonce=next(n))) == "exists"  # a new request, same link
    assert w.link(link_entry(ALICE, ref="user-2")) == "nonce_used"  # same nonce, other fields
    assert w.link(link_entry(BOB)) == "exists_with_different_wallet"
    # the same reference string at another partner or mode is another reference
    assert w.link(link_entry(BOB, partner=OTHER_SHOP, nonce=next(n))) == "ok"
    assert w.link(link_entry(BOB, mode=Mode.LIVE, nonce=next(n))) == "ok"
    _put(w, SHOP, status=PartnerStatus.SUSPENDED)
    assert w.link(link_entry(BOB, ref="user-3", nonce=next(n))) == "partner_not_active"
    assert [c.value for c in LinkResult] == [
        "ok",
        "malformed",
        "actor_not_allowed",
        "signature_invalid",
        "signer_mismatch",
        "nonce_used",
        "deadline_expired",
        "deadline_too_far",
        "partner_not_found",
        "partner_not_active",
        "exists_with_different_wallet",
        "link_not_found",
        "exists",
        "not_linked",
    ]


def test_a_judged_link_is_sticky_even_when_the_state_changes() -> None:
    w = World()
    early = link_entry(ALICE)
    assert w.link(early) == "partner_not_found"
    assert w.onboard(SHOP).code == "ok"
    assert w.link(early) == "partner_not_found"  # a retry never changes an outcome
    assert w.link(link_entry(ALICE, nonce=b"\x02" * 32)) == "ok"  # a new nonce is a new request


def test_a_bad_signature_cannot_burn_a_users_nonce() -> None:
    w = _world(SHOP)
    good = link_entry(ALICE)
    forged = link_entry(BOB, signed={})  # bob signs
    forged = dataclasses.replace(forged, wallet=address(ALICE))  # claiming alice's address
    assert w.link(forged) == "signer_mismatch"
    assert w.link(good) == "ok"


def test_unlink_by_the_user_or_the_partner() -> None:
    w = _world(SHOP, OTHER_SHOP)
    assert w.link(link_entry(ALICE)) == "ok"
    ref = link_entry(ALICE).user_ref
    by_bob = link_entry(BOB, nonce=b"\x07" * 32, unlink=True)
    assert w.unlink(UnlinkEntry(SHOP, Mode.TEST, ref, by_bob.actor, by_bob)) == "link_not_found"
    signed_link = link_entry(ALICE, nonce=b"\x08" * 32)  # a Link signature used for an unlink
    assert w.unlink(UnlinkEntry(SHOP, Mode.TEST, ref, signed_link.actor, signed_link)) == (
        "signer_mismatch"
    )
    by_alice = link_entry(ALICE, nonce=b"\x09" * 32, unlink=True)
    assert w.unlink(UnlinkEntry(SHOP, Mode.TEST, ref, by_alice.actor, by_alice)) == "ok"
    assert linked_wallet(w.view, SHOP, Mode.TEST, ref) is None
    retry = UnlinkEntry(SHOP, Mode.TEST, ref, by_alice.actor, by_alice)
    assert w.unlink(retry) == "not_linked"  # the retry of a done unlink: a success
    assert w.link(link_entry(ALICE, nonce=b"\x0a" * 32)) == "ok"
    other = partner_actor(OTHER_SHOP)
    assert w.unlink(UnlinkEntry(SHOP, Mode.TEST, ref, other, None)) == "actor_not_allowed"
    user_actor = Actor(ActorKind.USER, b"\x01" * 16)
    assert w.unlink(UnlinkEntry(SHOP, Mode.TEST, ref, user_actor, None)) == "actor_not_allowed"
    ghost = b"\x55" * 16
    assert w.unlink(UnlinkEntry(ghost, Mode.TEST, ref, OPERATOR, None)) == "partner_not_found"
    assert w.unlink(UnlinkEntry(SHOP, Mode.TEST, ref, partner_actor(SHOP), None)) == "ok"
    assert w.unlink(UnlinkEntry(SHOP, Mode.TEST, ref, partner_actor(SHOP), None)) == "not_linked"
    assert w.apply("wallet.unlink", {"by": "nobody"}).code == "malformed"


# --- codes ------------------------------------------------------------------------------------


def test_code_result_codes_in_precedence() -> None:
    w = World()
    h = code_hash(b"c" * 16)
    ok = code_entry(ALICE, h)
    body = ok.to_body()
    assert w.apply("code.issue", {**body, "amount_limit": bytes(16)}).code == "malformed"
    assert w.issue(dataclasses.replace(ok, signature=bytes(65))) == "signature_invalid"
    assert w.issue(dataclasses.replace(ok, wallet=address(BOB))) == "signer_mismatch"
    assert w.issue(dataclasses.replace(ok, amount_limit=10**6)) == "signer_mismatch"
    assert w.issue(code_entry(ALICE, code_hash(b"d" * 16), ledger=3)) == "ledger_wrong_mode"
    assert w.issue(code_entry(ALICE, code_hash(b"d" * 16), expiry=T0_S)) == "expiry_passed"
    far = T0_S + w.config.code_expiry_s_max + 1
    assert w.issue(code_entry(ALICE, code_hash(b"d" * 16), expiry=far)) == "expiry_too_far"
    assert w.issue(ok) == "ok"
    assert w.issue(ok) == "exists"
    assert w.issue(code_entry(ALICE, h, amount_limit=5)) == "code_exists"
    assert w.issue(code_entry(BOB, h)) == "code_exists"
    assert [c.value for c in CodeResult] == [
        "ok",
        "malformed",
        "signature_invalid",
        "signer_mismatch",
        "exists",
        "code_exists",
        "ledger_wrong_mode",
        "expiry_passed",
        "expiry_too_far",
    ]


# --- wallets ----------------------------------------------------------------------------------


def test_wallet_accounts_open_on_first_use_once_per_mode_and_ledger() -> None:
    w = World()
    account, writes = open_wallet_account(w.view, Mode.TEST, address(ALICE), 2, T0_MS)
    assert writes
    w.view.apply(writes)
    assert open_wallet_account(w.view, Mode.TEST, address(ALICE), 2, T0_MS) == (account, ())
    live, _ = open_wallet_account(w.view, Mode.LIVE, address(ALICE), 3, T0_MS)
    assert live != account
    owner = get_owner(w.view, account)
    assert owner is not None and owner.kind == OwnerKind.WALLET and owner.owner == address(ALICE)
    with pytest.raises(InvalidRequest):
        open_wallet_account(w.view, Mode.TEST, address(ALICE), 3, T0_MS)


# --- audit and privacy ------------------------------------------------------------------------


def test_every_change_is_audited_with_its_actor_and_paged_newest_first() -> None:
    w = _world(SHOP, OTHER_SHOP)
    assert _put(w, SHOP) == "exists"  # no change, no audit entry
    assert w.link(link_entry(ALICE)) == "ok"
    assert w.link(link_entry(ALICE)) == "exists"
    assert w.link(link_entry(BOB, partner=OTHER_SHOP)) == "ok"
    limit_max = w.config.audit_list_limit_max
    page, more = list_audit(w.view, PLATFORM_SCOPE, Mode.TEST, limit=3, limit_max=limit_max)
    assert [(e.kind, e.partner) for e in page] == [
        ("wallet.link", OTHER_SHOP),
        ("wallet.link", SHOP),
        ("partner.put", OTHER_SHOP),
    ]
    assert more and page[0].actor_kind == ActorKind.PARTNER and page[0].log_time_ms == T0_MS
    rest, more = list_audit(
        w.view, PLATFORM_SCOPE, Mode.TEST, limit=3, limit_max=limit_max, starting_after=page[-1].seq
    )
    assert [(e.kind, e.partner, e.actor_kind) for e in rest] == [
        ("partner.put", SHOP, ActorKind.OPERATOR)
    ]
    assert not more
    mine, more = list_audit(w.view, SHOP, Mode.TEST, limit=10, limit_max=limit_max)
    assert [e.kind for e in mine] == ["wallet.link", "partner.put"] and not more
    assert all(e.partner == SHOP and e.mode == Mode.TEST for e in mine)  # only its own
    # the test-mode links are invisible in live mode; the partner puts show in both
    live, _ = list_audit(w.view, SHOP, Mode.LIVE, limit=10, limit_max=limit_max)
    assert [e.kind for e in live] == ["partner.put"]
    assert list_audit(w.view, b"\x77" * 16, Mode.TEST, limit=1, limit_max=limit_max) == ([], False)
    with pytest.raises(InvalidRequest):
        list_audit(w.view, SHOP, Mode.TEST, limit=limit_max + 1, limit_max=limit_max)


def test_a_partner_onboarded_in_one_mode_does_not_exist_in_the_other() -> None:
    w = World()
    test_only = tuple(r for r in ROLES if r.mode == Mode.TEST)
    assert _put(w, SHOP, roles=test_only) == "ok"
    assert w.link(link_entry(ALICE, mode=Mode.LIVE)) == "partner_not_found"
    ref = user_ref(SHOP, Mode.LIVE, "user-1")
    assert w.unlink(UnlinkEntry(SHOP, Mode.LIVE, ref, OPERATOR, None)) == "partner_not_found"
    assert w.link(link_entry(ALICE, nonce=b"\x02" * 32)) == "ok"


def test_the_state_holds_no_partner_name_or_user_id() -> None:
    w = World()
    from business.identity.ids import partner_id

    shop = partner_id("acme-planted-name")
    assert w.onboard(shop).code == "ok"
    planted = "alice.planted@example.com"
    entry = link_entry(ALICE, partner=shop, ref=planted)
    assert entry.user_ref == user_ref(shop, Mode.TEST, planted)
    assert w.link(entry) == "ok"
    everything = b"".join(k + v for k, v in w.view.data.items())
    assert b"acme-planted-name" not in everything and planted.encode() not in everything
    assert CHAIN_ID  # (the signature fields are all opaque hashes and addresses)


def test_the_dispatcher_applies_identity_entries_only_from_feature_version_7() -> None:
    from business.identity import IDENTITY_FEATURE_VERSION, IdentityMachine, PartnerPut
    from business.ledger import MemoryView
    from node.consensus.state_machine import (
        FEATURE_ENTRY,
        AppEntry,
        Dispatcher,
        LogPosition,
        encode_app_entry,
    )

    assert IDENTITY_FEATURE_VERSION == 7
    dispatcher = Dispatcher([IdentityMachine(IdentityConfig())], feature_version_max=7)
    view = MemoryView()
    put = encode_app_entry(
        AppEntry("partner.put", PartnerPut(SHOP, PartnerStatus.ACTIVE, ROLES, OPERATOR).to_body())
    )
    enable = encode_app_entry(AppEntry(FEATURE_ENTRY, {"version": 7}))
    at = LogPosition(1, 1, T0_MS)
    applied, writes = dispatcher.apply_batch([(at, put), (at, enable), (at, put)], view)
    assert [a.outcome.code for a in applied] == ["feature_not_enabled", "created", "ok"]
    view.apply(writes)
    assert get_partner(view, SHOP) is not None


_USERS = (user("p0"), user("p1"), user("p2"))
_requests = st.lists(
    st.tuples(
        st.sampled_from(["link", "user-unlink", "partner-unlink"]),
        st.integers(0, 2),  # who signs
        st.integers(0, 2),  # whose wallet the request names
        st.sampled_from(["r0", "r1"]),
        st.sampled_from([SHOP, OTHER_SHOP]),
    ),
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(_requests)
def test_every_stored_link_was_signed_by_its_wallet(requests: list) -> None:  # type: ignore[type-arg]
    w = _world(SHOP, OTHER_SHOP)
    signed: set[tuple[bytes, str, bytes]] = set()  # (partner, ref, wallet) a wallet signed
    for n, (kind, signer, named, ref, partner) in enumerate(requests):
        nonce = n.to_bytes(32, "big")
        e = link_entry(_USERS[signer], partner=partner, ref=ref, nonce=nonce, unlink=kind != "link")
        e = dataclasses.replace(e, wallet=address(_USERS[named]))
        if kind == "link":
            code = w.link(e)
            if signer == named:
                signed.add((partner, ref, address(_USERS[named])))
            else:
                assert code == "signer_mismatch"
        elif kind == "user-unlink":
            w.unlink(UnlinkEntry(partner, Mode.TEST, e.user_ref, e.actor, e))
        else:
            w.unlink(UnlinkEntry(partner, Mode.TEST, e.user_ref, partner_actor(partner), None))
    for partner in (SHOP, OTHER_SHOP):
        for ref in ("r0", "r1"):
            wallet = linked_wallet(w.view, partner, Mode.TEST, user_ref(partner, Mode.TEST, ref))
            assert wallet is None or (partner, ref, wallet) in signed
