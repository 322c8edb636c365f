"""Config validation, cluster init, and the purity of the sans-IO cores."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from node.config import load_node_config
from node.errors import ConfigError
from node.p2p.identity import load_identity_seed, peer_id_of_seed
from tools.cluster_init import init_cluster, load_layout

ROOT = Path(__file__).resolve().parent.parent
PURE_MODULES = [
    "node/storage/placement.py",
    "node/storage/erasure.py",
    "node/storage/entry.py",
    "node/records.py",
    "node/p2p/messages.py",
    # The anchoring cores; node/anchoring/service.py and chain.py do the I/O.
    "node/anchoring/state.py",
    "node/anchoring/driver.py",
    "node/anchoring/config.py",
    # The vault's EIP-712 withdrawals; node/chain/contracts.py does the web3 I/O.
    "node/chain/vault.py",
    # The deposit tracker; node/chain/deposit_watch.py does the web3 reads.
    "node/chain/deposits.py",
    # The dashboard's sessions and sign-in limits; gateway/dashboard/routes.py does the I/O.
    "gateway/dashboard/sessions.py",
    # baas-bench's arithmetic and verdicts (issue #13's ratios to etcd).
    "tools/bench_stats.py",
    "tools/bench_peer.py",
    # baas-chaos's checkers (tools/chaos.py collects what they judge).
    "tools/chaos_check.py",
    # The I/O side (LevelDB storage, the asyncio adapter) lives in node/replication.
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "node/consensus").glob("*.py")),
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "node/dataplane").glob("*.py")),
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "node/merkle").glob("*.py")),
    *sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "node/sim").glob("*.py")
        if p.name != "cli.py"  # builds random.Random(seed) and times the seeds
    ),
    # The ledger core; business/ledger/leveldb.py is its plyvel adapter.
    *sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "business/ledger").glob("*.py")
        if p.name != "leveldb.py"
    ),
    # The identity core (partners, wallets, links, approvals, operation scope): pure throughout.
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "business/identity").glob("*.py")),
    # Payments (the payment and order state machines, code redemption, listing search, the
    # webhook schedule and signature) and the payment codes (QR payloads, consumer codes,
    # their images): pure throughout.
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "business/payments").rglob("*.py")),
    # The Bridge core (points, tokens, reserves, policies, swaps): pure throughout.
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "business/bridge").glob("*.py")),
]
FORBIDDEN = {"asyncio", "trio", "aiohttp", "libp2p", "web3", "time", "random", "plyvel"}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_cores_import_no_io_clock_or_global_random(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, imported & FORBIDDEN


def test_only_the_bridge_imports_both_asyncio_and_trio() -> None:
    both = []
    for path in sorted((ROOT / "node").rglob("*.py")) + sorted((ROOT / "gateway").rglob("*.py")):
        text = path.read_text()
        if "import asyncio" in text and ("import trio" in text or "from trio" in text):
            both.append(path.relative_to(ROOT).as_posix())
    assert both == ["node/p2p/bridge.py"]


def test_init_writes_valid_configs_and_stable_identities(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path / "c", nodes=5, k=3, n=5)
    for node in layout.nodes:
        config = load_node_config(Path(node.config_path))
        assert config.me.peer_id == node.peer_id
        assert peer_id_of_seed(load_identity_seed(config.node.identity_file)) == node.peer_id
        assert (config.cluster.k, config.cluster.n, config.cluster.write_quorum) == (3, 5, 4)
        assert oct(config.node.identity_file.stat().st_mode)[-3:] == "600"
    assert load_layout(tmp_path / "c").nodes == layout.nodes
    with pytest.raises(ConfigError, match="refusing"):
        init_cluster(tmp_path / "c")


def test_n_above_node_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exceeds"):
        init_cluster(tmp_path / "c", nodes=4, k=3, n=5)
    assert not (tmp_path / "c" / "cluster.json").exists()


@pytest.mark.parametrize(
    ("raft_table", "message"),
    [
        ("tick_s = 0.05", "at least 1 s"),  # 10 ticks of 50 ms: elections on every stall
        ("heartbeat_ticks = 10", "heartbeat_ticks"),
        ('index_writes = "yes"', "index_writes"),
        ("inbox_frames_max = 0", "inbox_frames_max"),
        ("bloom_bits_per_key = -1", "bloom_bits_per_key must be an integer >= 0"),
        ("bloom_bits_per_key = 65", "bloom_bits_per_key must be at most 64"),
        ("ledger_account_cache_max = 1.5", "ledger_account_cache_max must be an integer"),
        ("ledger_account_cache_max = -1", "ledger_account_cache_max must be an integer"),
    ],
)
def test_invalid_raft_settings_are_refused(tmp_path: Path, raft_table: str, message: str) -> None:
    layout = init_cluster(tmp_path / "c")
    path = Path(layout.nodes[0].config_path)
    path.write_text(path.read_text() + f"\n[raft]\n{raft_table}\n")
    with pytest.raises(ConfigError, match=message):
        load_node_config(path)


def test_the_ledger_storage_settings_may_be_turned_off(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path / "c")
    path = Path(layout.nodes[0].config_path)
    path.write_text(
        path.read_text() + "\n[raft]\nbloom_bits_per_key = 0\nledger_account_cache_max = 0\n"
    )
    raft = load_node_config(path).raft
    assert (raft.bloom_bits_per_key, raft.ledger_account_cache_max) == (0, 0)


@pytest.mark.parametrize(
    ("repair_table", "message"),
    [
        ("shards_per_s_max = 0", "repair.shards_per_s_max"),
        ("page_records_max = 2.5", "repair.page_records_max must be an integer"),
        ("page_records_max = 5000", "at most records_per_request_max"),
        ("node_down_repair_after_s = -1", "repair.node_down_repair_after_s"),
        ("shards_per_round_max = 4", "at least cluster.n"),
        ("scrub = true", "unknown keys"),
    ],
)
def test_invalid_repair_settings_are_refused(
    tmp_path: Path, repair_table: str, message: str
) -> None:
    layout = init_cluster(tmp_path / "c")
    path = Path(layout.nodes[0].config_path)
    path.write_text(path.read_text() + f"\n[repair]\n{repair_table}\n")
    with pytest.raises(ConfigError, match=message):
        load_node_config(path)


def test_write_quorum_must_leave_no_room_for_a_second_decodable_version(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path / "c")
    path = Path(layout.nodes[0].config_path)
    text = (
        path.read_text()
        .replace("k = 3", "k = 2", 1)
        .replace("write_quorum = 4", "write_quorum = 3", 1)
    )
    path.write_text(text)  # k=2, n=5, quorum 3: two versions could hold 3 and 2 nodes
    with pytest.raises(ConfigError, match="must exceed n - k"):
        load_node_config(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("k = 3", "k = 6", "k <= n"),
        ("write_quorum = 4", "write_quorum = 2", "write_quorum"),
        ("[limits]", "[limits]\nshard_bytes_unbounded = 1", "unknown keys"),
        ("[limits]", "[limits]\nhints_max = -1", "hints_max"),
        ("[limits]", "[limits]\nhints_max = true", "hints_max"),
        ("[timeouts]", "[timeouts]\np2p_dial_s = 0", "p2p_dial_s"),
        ('p2p_listen = "/ip4/', 'p2p_listen = "/ip9/', "p2p_listen"),
    ],
)
def test_invalid_node_config_names_the_field(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    layout = init_cluster(tmp_path / "c")
    path = Path(layout.nodes[0].config_path)
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        load_node_config(path)
