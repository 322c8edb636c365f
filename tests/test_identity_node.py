"""The identity machine on the node (log feature 7): the dispatcher the node runs applies it,
a log-replay fixture guards its entry and state formats, and the node's identity read routes
answer from the applied state.

``python tests/test_identity_node.py`` rewrites ``fixtures/identity_v7.json`` (only when a
format change is intended: the point of the fixture is that it does not change).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from identitykit import OPERATOR, ROLES, SHOP, T0_MS, code_entry, link_entry, partner_actor, user

from business.identity import (
    IDENTITY_FEATURE_VERSION,
    AssetRef,
    IdentityConfig,
    IdentityMachine,
    Mode,
    PartnerPut,
    PartnerStatus,
    Role,
    RoleAccount,
    UnlinkEntry,
)
from business.identity.ids import code_hash, partner_id, user_ref
from business.identity.model import PLATFORM_SCOPE
from business.ledger import MemoryView
from node.anchoring.forwarding import decode_forwarded
from node.anchoring.state import AnchorLog
from node.api.identity_routes import IdentityRoutes, add_identity_routes
from node.api.problem import problem_middleware
from node.consensus.members import MembersMachine
from node.consensus.record_index import RecordIndex
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    Dispatcher,
    LogPosition,
    encode_app_entry,
)
from node.errors import InvalidRequest
from node.main import FEATURE_VERSION_MAX
from node.merkle.log import root_at

FIXTURE = Path(__file__).parent / "fixtures" / "identity_v7.json"
FIRST_INDEX = 20


def node_dispatcher() -> Dispatcher:
    """The machines the node registers (node/main.py), in its order."""
    return Dispatcher(
        [RecordIndex(), MembersMachine(), AnchorLog(root_at), IdentityMachine(IdentityConfig())],
        feature_version_max=FEATURE_VERSION_MAX,
    )


def run(view: MemoryView, payloads: list[bytes], first_index: int = FIRST_INDEX) -> list[str]:
    batch = [
        (LogPosition(first_index + i, 1, T0_MS + i), payload) for i, payload in enumerate(payloads)
    ]
    applied, writes = node_dispatcher().apply_batch(batch, view)
    view.apply(writes)
    return [a.outcome.code for a in applied]


def fixture_entries() -> list[AppEntry]:
    """Every identity entry type, successes and refusals, as a partner's first day goes."""
    alice = user("alice")
    more_roles = (*ROLES, RoleAccount(Mode.LIVE, Role.SETTLEMENT, AssetRef.BAAS))
    return [
        AppEntry(FEATURE_ENTRY, {"version": IDENTITY_FEATURE_VERSION}),
        AppEntry("partner.put", PartnerPut(SHOP, PartnerStatus.ACTIVE, ROLES, OPERATOR).to_body()),
        AppEntry("wallet.link", link_entry(alice).to_body()),
        AppEntry("wallet.link", link_entry(alice, mode=Mode.LIVE, nonce=b"\x02" * 32).to_body()),
        AppEntry(
            "partner.put",
            PartnerPut(SHOP, PartnerStatus.ACTIVE, more_roles, partner_actor(SHOP)).to_body(),
        ),
        AppEntry(
            "partner.put",  # a partner may not change its own status
            PartnerPut(SHOP, PartnerStatus.SUSPENDED, more_roles, partner_actor(SHOP)).to_body(),
        ),
        AppEntry("code.issue", code_entry(alice, code_hash(b"c" * 16)).to_body()),
        AppEntry(
            "wallet.unlink",
            UnlinkEntry(
                SHOP, Mode.TEST, user_ref(SHOP, Mode.TEST, "user-1"), partner_actor(SHOP), None
            ).to_body(),
        ),
        AppEntry(
            "partner.put",
            PartnerPut(SHOP, PartnerStatus.SUSPENDED, more_roles, OPERATOR).to_body(),
        ),
    ]


def build_fixture() -> dict[str, object]:
    payloads = [encode_app_entry(e) for e in fixture_entries()]
    view = MemoryView()
    codes = run(view, payloads)
    return {
        "first_index": FIRST_INDEX,
        "log_time_ms_first": T0_MS,
        "payloads_hex": [p.hex() for p in payloads],
        "codes": codes,
        "state_hex": {k.hex(): v.hex() for k, v in sorted(view.data.items())},
    }


def test_the_node_understands_feature_seven_and_applies_identity_only_once_enabled() -> None:
    assert FEATURE_VERSION_MAX >= IDENTITY_FEATURE_VERSION == 7
    view = MemoryView()
    put = AppEntry("partner.put", PartnerPut(SHOP, PartnerStatus.ACTIVE, ROLES, OPERATOR).to_body())
    assert run(view, [encode_app_entry(put)]) == ["feature_not_enabled"]
    assert view.data == {}  # a node before feature 7 changed nothing
    enable = AppEntry(FEATURE_ENTRY, {"version": 7})
    assert run(view, [encode_app_entry(enable), encode_app_entry(put)]) == ["created", "ok"]
    assert any(k.startswith(b"id/p/") for k in view.data)


def test_v7_fixture_decodes_and_applies_identically() -> None:
    """Guards the feature-7 entry and state formats: the same bytes, the same verdicts, the
    same state, byte for byte (as members_v5.json does for feature 5)."""
    fixture = json.loads(FIXTURE.read_text())
    assert build_fixture()["payloads_hex"] == fixture["payloads_hex"]
    view = MemoryView()
    payloads = [bytes.fromhex(p) for p in fixture["payloads_hex"]]
    assert run(view, payloads, fixture["first_index"]) == fixture["codes"]
    assert {k.hex(): v.hex() for k, v in sorted(view.data.items())} == fixture["state_hex"]
    # The verdicts themselves, so a regenerated fixture cannot quietly bless a changed rule.
    assert fixture["codes"] == [
        "created",
        "ok",
        "ok",
        "ok",
        "ok",
        "actor_not_allowed",
        "ok",
        "ok",
        "ok",
    ]


# --- the node's identity read routes, on an applied state ------------------------------------


class _NoProposals:
    """The read routes never propose; a proposal here would be a test bug."""

    async def propose(self, entry: AppEntry, *, timeout_s: float) -> object:
        raise AssertionError("no proposal expected")


@pytest.fixture
async def node_reads() -> AsyncIterator[TestClient]:
    view = MemoryView()
    run(view, [encode_app_entry(e) for e in fixture_entries()])
    app = web.Application(middlewares=[problem_middleware])

    async def no_local(entry: AppEntry) -> object:
        raise AssertionError("no proposal expected")

    add_identity_routes(
        app,
        IdentityRoutes(
            view=lambda: view,
            applied_index=lambda: 7,
            proposer=_NoProposals(),  # type: ignore[arg-type]
            propose_local=no_local,  # type: ignore[arg-type]
            is_leader=lambda: False,
            propose_timeout_s=1.0,
            audit_limit_max=100,
        ),
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_partner_read_lists_accounts_per_mode(node_reads: TestClient) -> None:
    reply = await node_reads.get(f"/internal/v1/identity/partners/{SHOP.hex()}")
    body = await reply.json()
    assert reply.status == 200 and body["status"] == "suspended"
    assert body["applied_index"] == 7  # every read says how fresh it is (the gateway keeps max)
    modes = {(a["mode"], a["role"]) for a in body["accounts"]}
    assert ("live", "settlement") in modes and ("test", "issuance") in modes
    assert len(body["accounts"]) == len(ROLES) + 1
    missing = await node_reads.get(f"/internal/v1/identity/partners/{partner_id('nobody').hex()}")
    assert missing.status == 404 and (await missing.json())["code"] == "partner_not_found"
    bad = await node_reads.get("/internal/v1/identity/partners/zz")
    assert bad.status == 400 and (await bad.json())["param"] == "partner"


async def test_audit_pages_newest_first_per_scope_and_mode(node_reads: TestClient) -> None:
    base = "/internal/v1/identity/audit"
    # Test mode: the onboarding, the role added, the suspension (partner puts show in both
    # modes), the test link and the unlink; live: the three puts and the live link.
    test = await (await node_reads.get(f"{base}?scope={SHOP.hex()}&mode=test")).json()
    assert [e["kind"] for e in test["data"]] == [
        "partner.put",
        "wallet.unlink",
        "partner.put",
        "wallet.link",
        "partner.put",
    ]
    assert test["has_more"] is False and test["applied_index"] == 7
    assert [e["actor_kind"] for e in test["data"]] == [
        "operator",
        "partner",
        "partner",
        "partner",
        "operator",
    ]
    live = await (await node_reads.get(f"{base}?scope={SHOP.hex()}&mode=live")).json()
    assert [e["kind"] for e in live["data"]] == [
        "partner.put",
        "partner.put",
        "wallet.link",
        "partner.put",
    ]
    page = await (
        await node_reads.get(f"{base}?scope={PLATFORM_SCOPE.hex()}&mode=test&limit=2")
    ).json()
    assert [e["seq"] for e in page["data"]] == [4, 3] and page["has_more"] is True
    rest = await (
        await node_reads.get(
            f"{base}?scope={PLATFORM_SCOPE.hex()}&mode=test&limit=2&starting_after=3"
        )
    ).json()
    assert [e["seq"] for e in rest["data"]] == [2, 1]
    bad = await node_reads.get(f"{base}?scope={SHOP.hex()}&mode=both")
    assert bad.status == 400 and (await bad.json())["param"] == "mode"


async def test_link_read_answers_the_wallet_in_its_mode_only(node_reads: TestClient) -> None:
    ref_test = user_ref(SHOP, Mode.TEST, "user-1").hex()
    ref_live = user_ref(SHOP, Mode.LIVE, "user-1").hex()
    base = f"/internal/v1/identity/links/{SHOP.hex()}"
    unlinked = await node_reads.get(f"{base}/test/{ref_test}")  # the partner unlinked it
    assert unlinked.status == 404 and unlinked.headers["X-Baas-Applied-Index"] == "7"
    live = await node_reads.get(f"{base}/live/{ref_live}")
    assert live.status == 200
    wallet, applied = (await live.json())["wallet"], (await live.json())["applied_index"]
    assert applied == 7
    assert wallet.lower() == user("alice").address.lower()
    cross = await node_reads.get(f"{base}/test/{ref_live}")  # a live reference in test mode
    assert cross.status == 404


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(build_fixture(), indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)


async def test_the_propose_routes_take_identity_entries_only_and_the_leader_route_leaders_only(
    node_reads: TestClient,
) -> None:
    def body(entry: AppEntry) -> bytes:
        return msgpack.packb({"entry": encode_app_entry(entry)}, use_bin_type=True)

    put = AppEntry("partner.put", PartnerPut(SHOP, PartnerStatus.ACTIVE, ROLES, OPERATOR).to_body())
    headers = {"Content-Type": "application/msgpack"}
    # Not the leader: the forwarded route answers 503 not_leader, so the sender retries.
    follower = await node_reads.post(
        "/internal/v1/identity/propose", data=body(put), headers=headers
    )
    assert follower.status == 503 and (await follower.json())["code"] == "not_leader"
    # Entries of other machines are not taken on the identity routes (nor the reverse:
    # decode_forwarded without ``accepts`` takes anchoring entries only).
    anchor = AppEntry("anchor.lease", {"holder": "x"})
    for path in ("/internal/v1/identity/propose", "/internal/v1/identity/entries"):
        refused = await node_reads.post(path, data=body(anchor), headers=headers)
        assert refused.status == 400, path
    with pytest.raises(InvalidRequest):
        decode_forwarded({"entry": encode_app_entry(put)})
    assert decode_forwarded({"entry": encode_app_entry(put)}, accepts={"partner.put"}) == put
    as_json = await node_reads.post("/internal/v1/identity/entries", json={"entry": "x"})
    assert as_json.status == 400
