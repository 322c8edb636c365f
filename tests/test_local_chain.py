"""Every local cluster gets a development chain: keys and ``[anchoring]`` tables from ``init``,
the chain process and the registry from ``LocalCluster`` (tools/local_chain.py).

No node runs here: the chain, the registry and the configs are what is checked, on the
embedded chain (``baas-chain serve``) and on a real anvil.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from web3 import Web3

from node.anchoring.chain import (
    AnchorChain,
    ChainUnavailable,
    balance,
    connect_web3,
    deploy_registry,
    fund,
    set_submitter,
)
from node.anchoring.keyfile import ChainKey, load_key_file
from node.config import load_node_config
from node.errors import ConfigError, OperationFailed
from tools import cluster_cli
from tools.cluster_init import (
    ANVIL_CHAIN_ID,
    CHAIN_OWNER_KEY,
    EMBEDDED_CHAIN_ID,
    ClusterLayout,
    add_node,
    init_cluster,
    load_layout,
    set_toml_keys,
)
from tools.compose import ComposeSpec, render_compose
from tools.local_chain import (
    point_nodes_at,
    setup_registry,
    start_chain,
    stop_process,
    wait_until_answering,
)
from tools.local_cluster import LocalCluster
from tools.local_vault import DEPOSITS_MARKER

HOLDERS = ("node-1", "node-2", "node-3")
ROOT = bytes(range(32))


def _anchoring(layout: ClusterLayout, name: str) -> dict[str, object]:
    path = Path(layout.directory) / name / "node.toml"
    table = tomllib.loads(path.read_text())["anchoring"]
    assert isinstance(table, dict)
    return table


def _private_keys(directory: Path) -> list[str]:
    """The hex of every chain key file in the cluster (what must never be shown)."""
    keys = sorted((directory / "secrets").glob("chain-*.key"))
    assert keys
    return [path.read_text().strip().removeprefix("0x") for path in keys]


def _assert_no_key_in(text: str, directory: Path) -> None:
    for key in _private_keys(directory):
        assert key not in text and key.upper() not in text


# -- init ----------------------------------------------------------------------------------


def test_init_writes_chain_keys_and_every_nodes_anchoring_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cluster"
    assert cluster_cli.main(["init", "--dir", str(directory), "--base-port", "7300"]) == 0
    layout = load_layout(directory)
    chain = layout.chain
    assert (chain.kind, chain.url) == ("embedded", "http://127.0.0.1:7311")
    assert chain.anchor_nodes == HOLDERS
    # key files: one per holder and the owner's, 0600, loadable, nobody else has one
    for name in [*HOLDERS, "owner"]:
        path = directory / "secrets" / f"chain-{name}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        load_key_file(path)
    assert sorted(p.name for p in (directory / "secrets").glob("chain-*")) == [
        "chain-node-1.key",
        "chain-node-2.key",
        "chain-node-3.key",
        "chain-owner.key",
    ]
    assert load_key_file(directory / CHAIN_OWNER_KEY).address == chain.owner
    # every node's [anchoring], with exactly these keys; key_file only for holders
    for node in layout.nodes:
        expected: dict[str, object] = {
            "enabled": True,
            "rpc_url": "http://127.0.0.1:7311",
            "chain_id": EMBEDDED_CHAIN_ID,
            "contract": chain.expected_contract,
            "anchor_interval_s": 2.0,
            "anchor_batch_max": 1000,
            "confirmations": 2,
            "lease_ttl_s": 6.0,
            "poll_interval_s": 0.2,
        }
        if node.name in HOLDERS:
            expected["key_file"] = f"../secrets/chain-{node.name}.key"
            key_path = Path(node.config_path).parent / str(expected["key_file"])
            assert key_path.resolve() == (directory / f"secrets/chain-{node.name}.key").resolve()
        assert _anchoring(layout, node.name) == expected, node.name
        load_node_config(Path(node.config_path))  # the node still loads its config
    assert Web3.is_checksum_address(chain.expected_contract)
    # no private key in what init printed or wrote outside secrets/
    printed = capsys.readouterr()
    assert "chain (embedded, development only): http://127.0.0.1:7311" in printed.out
    written = "".join(
        p.read_bytes().decode("latin-1")
        for p in directory.rglob("*")
        if p.is_file() and "secrets" not in p.parts
    )
    _assert_no_key_in(printed.out + printed.err + written, directory)


def test_init_without_a_chain_disables_anchoring(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path, chain="none", nodes=3, n=3)
    assert not layout.chain.enabled
    assert [_anchoring(layout, node.name) for node in layout.nodes] == [{"enabled": False}] * 3
    assert list((tmp_path / "secrets").glob("chain-*")) == []
    assert load_layout(tmp_path).chain == layout.chain
    cluster = LocalCluster(layout)
    cluster.start_chain()  # nothing to start
    assert (cluster.chain_url, cluster.chain_id, cluster.chain_contract) == (None, None, None)
    assert cluster.chain_process is None
    assert cluster.stop() == {}


def test_init_refuses_bad_chain_options_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chain 'ganache'"):
        init_cluster(tmp_path / "a", chain="ganache")
    with pytest.raises(ConfigError, match=r"anchor_nodes must be in 1\.\.3"):
        init_cluster(tmp_path / "b", nodes=3, n=3, anchor_nodes=4)
    with pytest.raises(ConfigError, match="anchor_nodes"):
        init_cluster(tmp_path / "c", anchor_nodes=0)
    with pytest.raises(ConfigError, match="host must be an IP address"):
        init_cluster(tmp_path / "d", chain_host="chain")
    assert not any((tmp_path / name).exists() for name in "abcd")
    # fewer nodes than the default three holders: every node holds a key
    small = init_cluster(tmp_path / "e", nodes=2, k=1, n=2)
    assert small.chain.anchor_nodes == ("node-1", "node-2")


def test_init_exist_ok_refuses_another_chain(tmp_path: Path) -> None:
    first = init_cluster(tmp_path, base_port=7400)
    again = init_cluster(tmp_path, base_port=7400, exist_ok=True)
    assert again.chain == first.chain
    with pytest.raises(ConfigError, match="another chain"):
        init_cluster(tmp_path, base_port=7400, chain="anvil", exist_ok=True)
    with pytest.raises(ConfigError, match="another chain"):
        init_cluster(tmp_path, base_port=7400, anchor_nodes=2, exist_ok=True)
    with pytest.raises(ConfigError, match="another chain"):
        init_cluster(tmp_path, base_port=7400, chain_port=8545, exist_ok=True)


def test_an_added_node_points_at_the_chain_without_a_key(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path)
    node = add_node(tmp_path)
    expected = {k: v for k, v in _anchoring(layout, "node-1").items() if k != "key_file"}
    assert _anchoring(load_layout(tmp_path), node.name) == expected
    assert not (tmp_path / "secrets" / f"chain-{node.name}.key").exists()
    load_node_config(Path(node.config_path))


def test_set_toml_keys_changes_only_the_named_keys() -> None:
    text = (
        "[node]\nname = 'n'\n\n# why\n[anchoring]\nenabled = true\n"
        "contract = '0x1'\nanchor_interval_s = 9.5  # tuned\n\n[raft]\nx = 1\n"
    )
    changed = set_toml_keys(text, "anchoring", {"contract": "0x2", "chain_id": 7})
    assert tomllib.loads(changed) == {
        "node": {"name": "n"},
        "anchoring": {"enabled": True, "contract": "0x2", "chain_id": 7, "anchor_interval_s": 9.5},
        "raft": {"x": 1},
    }
    assert "# why" in changed and "anchor_interval_s = 9.5  # tuned" in changed
    appended = set_toml_keys("[node]\nname = 'n'\n", "anchoring", {"enabled": False})
    assert tomllib.loads(appended)["anchoring"] == {"enabled": False}
    hosts = set_toml_keys(text, "webhooks", {"allow_hosts": ["127.0.0.1", "a.b"]})
    assert tomllib.loads(hosts)["webhooks"] == {"allow_hosts": ["127.0.0.1", "a.b"]}
    with pytest.raises(ConfigError, match="cannot write"):
        set_toml_keys(text, "anchoring", {"contract": None})


# -- the chain of a LocalCluster -----------------------------------------------------------


@pytest.mark.parametrize(("kind", "chain_id"), [("embedded", EMBEDDED_CHAIN_ID), ("anvil", 31337)])
def test_local_cluster_starts_the_chain_deploys_the_registry_and_stops_it_last(
    kind: str, chain_id: int, tmp_path: Path
) -> None:
    assert ANVIL_CHAIN_ID == 31337
    layout = init_cluster(tmp_path, chain=kind)
    tomls_before = {n.name: Path(n.config_path).read_text() for n in layout.nodes}
    cluster = LocalCluster(layout)
    cluster.start_chain()
    try:
        process = cluster.chain_process
        assert process is not None and process.poll() is None and cluster.running("chain")
        assert cluster.chain_url == layout.chain.url
        assert cluster.chain_id == chain_id
        assert cluster.chain_contract == layout.chain.expected_contract
        assert cluster.registry is not None and cluster.registry.deployed
        # the configs init wrote were right: nothing was rewritten, only the test-mode vault's
        # [deposits] appended (tools/local_vault.py: its address is known once deployed)
        assert cluster.vault is not None and cluster.vault.deployed
        for node in layout.nodes:
            text = Path(node.config_path).read_text()
            kept, marker, _ = text.partition("\n" + DEPOSITS_MARKER)
            assert marker and kept.rstrip("\n") == tomls_before[node.name].rstrip("\n")
            deposits = tomllib.loads(text)["deposits"]
            assert deposits["enabled"] is True
            assert deposits["test"]["vault"] == cluster.vault.vault
            assert deposits["test"]["chain_id"] == chain_id
        w3 = connect_web3(cluster.chain_url)
        registry = AnchorChain(w3, cluster.chain_contract)
        assert registry.next_batch_id() == 1
        for name in HOLDERS:
            assert registry.is_submitter(_key(tmp_path, name).address)
        assert not registry.is_submitter(layout.chain.owner)
        # a holder's key, as its config names it, is funded and can anchor
        table = _anchoring(layout, "node-2")
        key = load_key_file(Path(layout.nodes[1].config_path).parent / str(table["key_file"]))
        assert balance(w3, key.address) >= 10**18
        _anchor(AnchorChain(w3, str(table["contract"]), key))
        assert registry.anchor_of(1).root == ROOT
        # blocks keep coming (--block-time 1), so confirmations advance
        head = registry.head()
        assert _wait(lambda: registry.head() >= head + 2, timeout_s=5.0)
    finally:
        codes = cluster.stop()
    assert codes == {"chain": 0}
    assert process.poll() == 0
    assert cluster.chain_process is not None and not cluster.running("chain")
    with pytest.raises(ChainUnavailable):
        wait_until_answering(layout.chain.url, timeout_s=0.2)
    log = (tmp_path / "logs" / "chain.log").read_text()
    assert "Traceback" not in log
    _assert_no_key_in(log, tmp_path)


def test_a_restarted_cluster_gets_a_new_chain_and_the_registry_at_the_same_address(
    tmp_path: Path,
) -> None:
    layout = init_cluster(tmp_path, nodes=3, n=3)
    cluster = LocalCluster(layout)
    contracts = []
    for _ in range(2):
        cluster.start_chain()
        try:
            assert cluster.registry is not None and cluster.registry.deployed
            contracts.append(cluster.chain_contract)
            w3 = connect_web3(layout.chain.url)
            anchors = AnchorChain(w3, layout.chain.expected_contract, _key(tmp_path, "node-1"))
            assert anchors.next_batch_id() == 1  # a new chain: the last run's anchor is gone
            _anchor(anchors)
        finally:
            cluster.stop()
    assert contracts == [layout.chain.expected_contract] * 2


def test_setup_rewrites_the_configs_when_the_registry_lands_elsewhere_and_is_idempotent(
    tmp_path: Path,
) -> None:
    layout = init_cluster(tmp_path, chain="anvil", nodes=4, n=4, anchor_nodes=2)
    before = {n.name: Path(n.config_path).read_text() for n in layout.nodes}
    with (tmp_path / "chain.log").open("wb") as log:
        process = start_chain(layout.chain, log)
    try:
        w3 = connect_web3(layout.chain.url)
        owner = load_key_file(tmp_path / CHAIN_OWNER_KEY)
        fund(w3, owner.address, 10**19)
        _send_to_self(w3, owner_key_path=tmp_path / CHAIN_OWNER_KEY)  # nonce 0 is used up
        first = setup_registry(layout)
        assert first.deployed and first.contract != layout.chain.expected_contract
        for node in layout.nodes:
            table = _anchoring(layout, node.name)
            assert (table["contract"], table["chain_id"]) == (first.contract, 31337)
            old = before[node.name].replace(layout.chain.expected_contract, first.contract)
            assert Path(node.config_path).read_text() == old  # one line changed, nothing else
            load_node_config(Path(node.config_path))
        # again: nothing deployed, nothing rewritten; a holder taken off is allowed again
        set_submitter(w3, first.contract, owner, first.submitters[1], False)
        after_first = {n.name: Path(n.config_path).read_text() for n in layout.nodes}
        second = setup_registry(layout)
        assert (second.deployed, second.contract) == (False, first.contract)
        assert AnchorChain(w3, first.contract).is_submitter(first.submitters[1])
        assert {n.name: Path(n.config_path).read_text() for n in layout.nodes} == after_first
        # configs naming someone else's registry are pointed at a new one of our own
        rival = deploy_registry(w3, None, [])
        assert point_nodes_at(layout, 31337, rival) == [n.name for n in layout.nodes]
        third = setup_registry(layout)
        assert third.deployed and third.contract not in (rival, first.contract)
        assert AnchorChain(w3, third.contract).owner() == owner.address
        assert {str(_anchoring(layout, n.name)["contract"]) for n in layout.nodes} == {
            third.contract
        }
    finally:
        assert stop_process(process) == 0


def test_chain_setup_command_prints_the_registry_but_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = init_cluster(tmp_path, chain="anvil", nodes=3, n=3)
    directory = str(tmp_path)
    assert cluster_cli.main(["chain-setup", "--dir", directory, "--wait", "0.3"]) == 2
    refused = capsys.readouterr()
    assert f"{layout.chain.url} did not answer" in refused.err and "Traceback" not in refused.err
    with (tmp_path / "chain.log").open("wb") as log:
        process = start_chain(layout.chain, log)
    try:
        assert cluster_cli.main(["chain-setup", "--dir", directory]) == 0
        printed = capsys.readouterr()
        answer = json.loads(printed.out)
        assert answer["contract"] == layout.chain.expected_contract
        assert (answer["chain_id"], answer["deployed"], len(answer["submitters"])) == (
            31337,
            True,
            3,
        )
        _assert_no_key_in(printed.out + printed.err, tmp_path)
    finally:
        stop_process(process)


def test_a_chain_that_cannot_start_stops_the_cluster_start(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path, nodes=3, n=3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", layout.chain.port))
        taken.listen()
        cluster = LocalCluster(layout)
        with pytest.raises(OperationFailed, match=r"embedded chain: .*logs/chain\.log"):
            cluster.start()
    process = cluster.chain_process
    assert process is None or process.poll() is not None
    assert not any(cluster.running(node.name) for node in layout.nodes)
    assert "cannot serve on 127.0.0.1" in (tmp_path / "logs" / "chain.log").read_text()


def test_the_compose_chain_health_check_asks_a_served_chain(tmp_path: Path) -> None:
    spec = ComposeSpec()
    probe = render_compose(spec)["services"]["chain"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    compose_url = f"http://{spec.chain_host}:{spec.chain_port}"
    layout = init_cluster(tmp_path, nodes=3, n=3)
    with (tmp_path / "chain.log").open("wb") as log:
        process = start_chain(layout.chain, log)
    try:
        code = probe[3].replace(compose_url, layout.chain.url)
        assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    finally:
        stop_process(process)
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert dead.returncode != 0


# -- helpers -------------------------------------------------------------------------------


def _key(directory: Path, name: str) -> ChainKey:
    return load_key_file(directory / "secrets" / f"chain-{name}.key")


def _anchor(anchors: AnchorChain) -> None:
    """Anchor batch 1 and wait until it is mined."""
    signed = anchors.sign_anchor(1, 5, ROOT, anchors.account_nonce())
    assert anchors.broadcast(signed.raw) == "sent"
    assert _wait(lambda: anchors.inclusion(signed.tx_hash) is not None)


def _send_to_self(w3: Web3, owner_key_path: Path) -> None:
    key = load_key_file(owner_key_path)
    tx = {
        "type": 2,
        "chainId": w3.eth.chain_id,
        "nonce": w3.eth.get_transaction_count(Web3.to_checksum_address(key.address)),
        "to": key.address,
        "value": 1,
        "gas": 21_000,
        "maxFeePerGas": 2 * 10**10,
        "maxPriorityFeePerGas": 10**9,
    }
    tx_hash = w3.eth.send_raw_transaction(key.sign_transaction(tx).raw)
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)["status"] == 1


def _wait(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_cluster_without_a_chain_starts_with_anchoring_off(tmp_path: Path) -> None:
    from nodeapi import node_get, running_cluster

    with running_cluster(tmp_path, chain="none") as cluster:
        status = node_get(cluster, "node-1", "/internal/v1/status")
        assert status is not None and status["anchoring"]["enabled"] is False
        assert cluster.chain_url is None
