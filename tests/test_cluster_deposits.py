"""Vault deposits credited through the log, in real processes: 5 nodes, the gateway and anvil
(1 s blocks), the test-mode vault deployed by the local cluster (tools/local_vault.py).

In one run, in this order: a deposit to a linked wallet is credited exactly once after its
confirmations (the balance read through the nodes' ledger API); one to an unknown wallet is
held in suspense and listed; ``kill -9`` of the watching leader between seeing a deposit and
crediting it still credits it exactly once (the next leader resumes from the replicated
cursor and credited set); a deposit reorganised away (``evm_snapshot``/``evm_revert``) before
its confirmations credits nothing; one reorganised away after its credit raises the alarm in
``/internal/v1/status`` and is never reversed.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest
from depositkit import credit_op, deposit_body
from nodeapi import node_get, raft_status_of, wait_for
from web3 import Web3

from business.identity.ids import Mode, ledger_number, wallet_account_id, wallet_id
from node.chain.contracts import contract_at, send
from node.chain.deposits import DepositKey, deposit_record_id, suspense_account, vault_account
from node.p2p.identity import keypair_of_seed, load_identity_seed, peer_id_of_seed
from node.replication.forward_auth import ForwardSigner
from node.replication.index_client import INDEX_PATH
from tools import cluster_cli
from tools.client import PartnerClient
from tools.cluster_init import init_cluster
from tools.ledger_client import LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

CONFIRMATIONS = 4
BAAS = ledger_number(Mode.TEST, 1)
UNIT = 10**18


class Chain:
    """The depositor's side of the dev chain."""

    def __init__(self, cluster: LocalCluster) -> None:
        assert cluster.vault is not None
        self.w3 = Web3(Web3.HTTPProvider(cluster.vault.url))
        self.vault = contract_at(self.w3, "BaasVault", cluster.vault.vault)
        self.token = contract_at(self.w3, "BaasToken", cluster.vault.token)
        self.depositor = cluster.vault.depositor
        self.chain_id = cluster.vault.chain_id

    def deposit(self, address: bytes, amount: int) -> DepositKey:
        send(self.token.functions.approve(self.vault.address, amount), self.depositor)
        wallet = wallet_id(address, Mode.TEST)
        receipt = send(
            self.vault.functions.deposit(self.token.address, amount, wallet), self.depositor
        )
        (entry,) = receipt["logs"][-1:]
        return DepositKey(self.chain_id, bytes(receipt["transactionHash"]), int(entry["logIndex"]))

    def rpc(self, method: str, params: list[Any]) -> Any:
        answer = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        assert "error" not in answer, answer
        return answer["result"]


def running(cluster: LocalCluster) -> list[str]:
    return [n.name for n in cluster.layout.nodes if cluster.running(n.name)]


def balance(cluster: LocalCluster, account: int) -> int:
    """The account's posted balance, read from every running node's ledger API (the freshest)."""
    best: tuple[int, int] = (-1, 0)
    for name in running(cluster):
        got = node_get(cluster, name, f"/internal/v1/ledger/accounts/{account}")
        if got is None:
            continue
        value = int(got["credits_posted"]) - int(got["debits_posted"])
        best = max(best, (int(got.get("applied_index", 0)), value))
    return best[1]


def deposits_status(cluster: LocalCluster) -> dict[str, Any]:
    """The acting watcher's ``deposits`` status (the leader's)."""
    for name in running(cluster):
        status = (node_get(cluster, name, "/internal/v1/status") or {}).get("deposits") or {}
        if status.get("acting"):
            return {"node": name, **status}
    return {}


def credited(cluster: LocalCluster, key: DepositKey) -> bool:
    rid = deposit_record_id(key).hex()
    return any(
        node_get(cluster, n, f"/internal/v1/ledger/operations/{rid}") is not None
        for n in running(cluster)
    )


async def link_user(cluster: LocalCluster, user: UserWallet) -> None:
    key, secret = onboard_partner(cluster.layout, "shop-d")["test"]
    ledger = LedgerClient(PartnerClient(cluster.layout.gateway_url, key, secret), attempts_max=3)
    try:
        body = user.link("shop-d", livemode=False, user_id="u-1", deadline=int(time.time()) + 600)
        deadline = time.monotonic() + 90
        while True:  # the gateway learns the new credential at its next keyring reload
            linked = await ledger.call("POST", "/v1/wallets/links", body, key="link-u-1")
            if linked.status in (200, 201):
                return
            assert linked.status in (401, 503), linked
            assert time.monotonic() < deadline, linked
            await asyncio.sleep(0.5)
    finally:
        await ledger.http.close()


async def test_deposits_credit_once_hold_unknown_wallets_survive_kill_and_alarm_on_reorg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = init_cluster(tmp_path, nodes=5, partners=("shop-a",), chain="anvil")
    cluster = LocalCluster(layout)
    cluster.deposits_settings = {"confirmations": CONFIRMATIONS, "poll_interval_s": 0.2}
    cluster.start()
    try:
        chain = Chain(cluster)
        alice = UserWallet(bytes(range(1, 33)))
        alice_address = bytes.fromhex(alice.address[2:])
        alice_account = wallet_account_id(wallet_id(alice_address, Mode.TEST), Mode.TEST, BAAS)
        await link_user(cluster, alice)
        await wait_for("a watching leader", lambda: deposits_status(cluster), 60)

        # 1. A deposit to a linked wallet: nothing before its confirmations, then exactly once.
        first = chain.deposit(alice_address, 5 * UNIT)
        assert not credited(cluster, first)  # 1 confirmation of 4
        await wait_for("the first credit", lambda: balance(cluster, alice_account) > 0, 30)
        assert balance(cluster, alice_account) == 5 * UNIT

        # 2. An unknown wallet: held in suspense, listed for the operator.
        stranger = bytes.fromhex("77" * 20)
        held = chain.deposit(stranger, 2 * UNIT)
        listed = await wait_for(
            "the suspense list",
            lambda: (node_get(cluster, "node-1", "/internal/v1/deposits/suspense") or {}).get(
                "data"
            ),
            30,
        )
        assert [d["tx_hash"] for d in listed] == ["0x" + held.tx_hash.hex()]
        assert listed[0]["amount"] == str(2 * UNIT)
        assert balance(cluster, suspense_account(Mode.TEST, BAAS)) == 2 * UNIT
        assert cluster_cli.main(["deposits", "--dir", str(tmp_path)]) == 0  # the operator's
        shown = json.loads(capsys.readouterr().out)
        assert shown["object"] == "list" and shown["data"] == listed

        # 3. kill -9 of the watching leader between seeing a deposit and crediting it.
        watcher = deposits_status(cluster)
        seen_before = watcher["test"]["watching"]["seen"]
        third = chain.deposit(alice_address, 3 * UNIT)
        await wait_for(
            "the leader to see it",
            lambda: deposits_status(cluster).get("test", {}).get("watching", {}).get("seen", 0)
            > seen_before,
            10,
        )
        assert not credited(cluster, third)
        cluster.kill(watcher["node"])
        await wait_for("the third credit", lambda: credited(cluster, third), 60)
        await wait_for("the balance", lambda: balance(cluster, alice_account) == 8 * UNIT, 10)
        assert balance(cluster, vault_account(Mode.TEST, BAAS)) == -10 * UNIT  # once each

        # 4. Reorganised away before its confirmations: credits nothing.
        snapshot = chain.rpc("evm_snapshot", [])
        gone = chain.deposit(alice_address, 7 * UNIT)
        assert chain.rpc("evm_revert", [snapshot]) is True
        head = chain.w3.eth.block_number
        await wait_for("more blocks", lambda: chain.w3.eth.block_number > head + CONFIRMATIONS, 30)
        await asyncio.sleep(1.0)  # a few polls past its would-be confirmation
        assert not credited(cluster, gone)
        assert balance(cluster, alice_account) == 8 * UNIT

        # 5. Reorganised away after its credit: the alarm, never a reversal.
        snapshot = chain.rpc("evm_snapshot", [])
        late = chain.deposit(alice_address, UNIT)
        await wait_for("the late credit", lambda: credited(cluster, late), 30)
        assert chain.rpc("evm_revert", [snapshot]) is True
        alarm = await wait_for(
            "the alarm",
            lambda: deposits_status(cluster).get("test", {}).get("recent_alarms"),
            30,
        )
        assert alarm[0]["kind"] == "credited_deposit_orphaned"
        assert alarm[0]["tx_hash"] == "0x" + late.tx_hash.hex()
        assert balance(cluster, alice_account) == 9 * UNIT  # kept: the operator decides

        # 6. A forged credit: whoever holds the node API token (every gateway does) posts a
        # deposit credit straight to the leader's index route. Refused unless a member node
        # signed the forward; one member's key is enough (docs/threat-model.md).
        forged = credit_op(deposit_body(991, alice_address, 1_000 * UNIT, ledger=BAAS))
        body = msgpack.packb({"proposals": [forged.to_body()]}, use_bin_type=True)
        leader = next(
            name
            for name in running(cluster)
            if (raft_status_of(cluster, name) or {}).get("role") == "leader"
        )
        outsider = ForwardSigner(
            peer_id_of_seed(b"\x07" * 32), keypair_of_seed(b"\x07" * 32).private_key.sign
        )
        for signer, code in ((None, "forward_unsigned"), (outsider, "forwarder_not_member")):
            status, answer = post_index(cluster, leader, body, signer)
            assert (status, answer["code"]) == (401, code), answer
        assert balance(cluster, alice_account) == 9 * UNIT
        member = next(n for n in cluster.layout.nodes if n.name != leader)
        seed = load_identity_seed(Path(cluster.layout.directory) / member.name / "identity.key")
        signed = ForwardSigner(member.peer_id, keypair_of_seed(seed).private_key.sign)
        status, answer = post_index(cluster, leader, body, signed)
        assert status == 200 and answer["results"][0]["code"] == "created", answer
        assert balance(cluster, alice_account) == 1_009 * UNIT
    finally:
        cluster.stop()


def post_index(
    cluster: LocalCluster, name: str, body: bytes, signer: ForwardSigner | None
) -> tuple[int, Any]:
    """POST a forward to ``name``'s index route with the node API token (and a signature)."""
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
    if signer is not None:
        headers.update(signer.headers(INDEX_PATH, body, int(time.time() * 1000)))
    request = urllib.request.Request(
        f"http://{cluster.node(name).http_addr}{INDEX_PATH}", data=body, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, msgpack.unpackb(response.read(), raw=False)
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
