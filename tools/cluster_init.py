"""``baas-cluster init``: lay out a cluster once -- identities, per-node TOML, gateway, keyring.

Writes, under the cluster directory::

    cluster.json               what was made: nodes, ports, peer ids, k, n (for tools and tests)
    secrets/master.key         keyring master key (0600; or give BAAS_MASTER_KEY instead)
    secrets/node-api.token     bearer token gateways use on node APIs (0600)
    secrets/partners.json      API key + secret of each partner, for the operator to hand out (0600)
    secrets/chain-owner.key    the chain key that deploys and owns the AnchorRegistry (0600)
    secrets/chain-<node>.key   the chain key of each anchoring node (0600; ``anchor_nodes`` of them)
    keyring.json               partner keys, encrypted under the master key
    gateway.toml               the gateway's config
    node-<i>/node.toml         each node's config (identical [cluster] table on every node)
    node-<i>/identity.key      each node's Ed25519 libp2p identity seed (0600)

Every node's TOML ends with an ``[anchoring]`` table pointing at the cluster's development chain
(``chain``: ``embedded``, the default, is ``baas-chain serve``; ``anvil`` the pinned anvil;
``none`` writes ``enabled = false``). The chain runs only while the cluster does, so the registry
is deployed when it starts (``tools/local_chain.py``): its address is known here already, because
the owner key deploys it as its first transaction on a new chain (nonce 0), and the chain id is
the chain program's. ``key_file`` is written only for the key holders, relative to the TOML like
the node's other paths.

Running it again on an existing directory refuses rather than overwriting identities: a node's
peer id must outlive restarts (``exist_ok`` accepts a directory that already holds the same
cluster shape, for container start-ups that run init every time).

By default every node listens on 127.0.0.1 (the local cluster); ``node_hosts`` and
``gateway_host`` give each process its own IP instead (the container cluster of
``tools/compose.py``, where every container has a fixed address). Ports are the same either way:
:func:`port_plan` is the one place that lays them out.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import rlp
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from gateway.keyring import Keyring, new_partner, save_keyring
from node.anchoring.keyfile import write_key_file
from node.config import ClusterConfig, ClusterMember, parse_host_port, read_toml
from node.errors import ConfigError
from node.p2p.identity import generate_identity_seed, peer_id_of_seed, write_identity_file

__all__ = [
    "ANVIL_CHAIN_ID",
    "CHAIN_KINDS",
    "CHAIN_OWNER_KEY",
    "DEFAULT_ANCHOR_NODES",
    "DEFAULT_BASE_PORT",
    "DEFAULT_CHAIN",
    "DEFAULT_K",
    "DEFAULT_N",
    "DEFAULT_NODES",
    "EMBEDDED_CHAIN_ID",
    "GATEWAY_CONFIG",
    "HOST",
    "ChainLayout",
    "ClusterLayout",
    "NodeLayout",
    "anchoring_values",
    "chain_key_relpath",
    "chain_port_of",
    "create_address",
    "init_cluster",
    "load_layout",
    "node_config_relpath",
    "node_name",
    "port_plan",
    "set_toml_keys",
]

HOST = "127.0.0.1"
DEFAULT_NODES = 5
DEFAULT_K = 3
DEFAULT_N = 5
DEFAULT_BASE_PORT = 7100
GATEWAY_CONFIG = "gateway.toml"

CHAIN_KINDS = ("embedded", "anvil", "none")
DEFAULT_CHAIN = "embedded"
DEFAULT_ANCHOR_NODES = 3  # more than one, so the anchoring lease can fail over
CHAIN_OWNER_KEY = "secrets/chain-owner.key"
ANVIL_CHAIN_ID = 31337  # what tools/local_chain.py starts anvil with
EMBEDDED_CHAIN_ID = 131277322940537  # eth-tester's (``baas-chain serve``)
CHAIN_BLOCK_TIME_S = 1.0
ANCHOR_INTERVAL_S = 2.0
ANCHOR_BATCH_MAX = 1000
CONFIRMATIONS = 2
# A development cluster fails over and notices blocks quickly (production keeps the defaults).
LEASE_TTL_S = 6.0
POLL_INTERVAL_S = 0.2


def node_name(index: int) -> str:
    """The name of the node at 0-based ``index``."""
    return f"node-{index + 1}"


def node_config_relpath(name: str) -> str:
    """Where a node's config lives, relative to the cluster directory."""
    return f"{name}/node.toml"


def port_plan(nodes: int, base_port: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """((p2p port, http port) per node, gateway port) from ``base_port`` upwards."""
    node_ports = tuple((base_port + 2 * i, base_port + 2 * i + 1) for i in range(nodes))
    return node_ports, base_port + 2 * nodes


def chain_port_of(nodes: int, base_port: int) -> int:
    """The chain's port in the plan of :func:`port_plan`: right after the gateway's."""
    return base_port + 2 * nodes + 1


def chain_key_relpath(name: str) -> str:
    """Where the chain key of node ``name`` lives, relative to the cluster directory."""
    return f"secrets/chain-{name}.key"


def create_address(sender: str, nonce: int) -> str:
    """The address of the contract ``sender`` creates with its transaction ``nonce``."""
    encoded = rlp.encode([bytes.fromhex(sender.removeprefix("0x")), nonce])
    return str(to_checksum_address(keccak(encoded)[12:]))


@dataclass(frozen=True, slots=True)
class ChainLayout:
    """The cluster's development chain: which program, where, and who holds chain keys.

    ``anchor_nodes`` name the nodes with a key file (:func:`chain_key_relpath`); ``owner`` is the
    address of ``secrets/chain-owner.key``, which deploys and owns the registry."""

    kind: str = "none"
    host: str = HOST
    port: int = 0
    anchor_nodes: tuple[str, ...] = ()
    owner: str = ""

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def expected_chain_id(self) -> int:
        return ANVIL_CHAIN_ID if self.kind == "anvil" else EMBEDDED_CHAIN_ID

    @property
    def expected_contract(self) -> str:
        """Where the owner's first transaction on a new chain puts the registry."""
        return create_address(self.owner, 0)


@dataclass(frozen=True, slots=True)
class NodeLayout:
    name: str
    peer_id: str
    p2p_port: int
    http_port: int
    config_path: str
    host: str = HOST

    @property
    def http_addr(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def p2p_addr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.p2p_port}"


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    directory: str
    cluster_id: str
    k: int
    n: int
    write_quorum: int
    nodes: tuple[NodeLayout, ...]
    gateway_port: int
    gateway_config_path: str
    partners: dict[str, dict[str, str]]  # partner id -> {"api_key", "secret_hex"}
    gateway_host: str = HOST
    chain: ChainLayout = field(default_factory=ChainLayout)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list | tuple):  # e.g. [webhooks] allow_hosts
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} into a node config")


def anchoring_values(
    chain: ChainLayout, name: str, chain_id: int, contract: str
) -> dict[str, object]:
    """Node ``name``'s ``[anchoring]`` table for a registry at ``contract`` on ``chain_id``."""
    if not chain.enabled:
        return {"enabled": False}
    values: dict[str, object] = {
        "enabled": True,
        "rpc_url": chain.url,
        "chain_id": chain_id,
        "contract": contract,
    }
    if name in chain.anchor_nodes:
        values["key_file"] = f"../{chain_key_relpath(name)}"
    values["anchor_interval_s"] = ANCHOR_INTERVAL_S
    values["anchor_batch_max"] = ANCHOR_BATCH_MAX
    values["confirmations"] = CONFIRMATIONS
    values["lease_ttl_s"] = LEASE_TTL_S
    values["poll_interval_s"] = POLL_INTERVAL_S
    return values


def _anchoring_toml(values: Mapping[str, object]) -> str:
    lines = [
        "",
        "# Chain anchoring (docs/verifiable-log.md), written by `baas-cluster init`; chain_id",
        "# and contract are rewritten at start if the chain puts the registry elsewhere.",
        "[anchoring]",
        *(f"{key} = {_toml_value(value)}" for key, value in values.items()),
        "",
    ]
    return "\n".join(lines)


def set_toml_keys(text: str, table: str, values: Mapping[str, object]) -> str:
    """``text`` with ``values`` set in its top-level ``[table]`` (added if missing); other lines,
    comments and keys stay as they are. ConfigError if the result does not read back so."""
    lines = text.split("\n")
    header = f"[{table}]"
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        body = "\n".join(f"{key} = {_toml_value(value)}" for key, value in values.items())
        result = f"{text.rstrip()}\n\n{header}\n{body}\n"
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
            len(lines),
        )
        pending = dict(values)
        for i in range(start + 1, end):
            key, sep, _ = lines[i].partition("=")
            if sep and key.strip() in pending:
                lines[i] = f"{key.strip()} = {_toml_value(pending.pop(key.strip()))}"
        new = [f"{key} = {_toml_value(value)}" for key, value in pending.items()]
        result = "\n".join([*lines[: start + 1], *new, *lines[start + 1 :]])
    try:
        written = tomllib.loads(result).get(table, {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"setting [{table}] keys made invalid TOML: {exc}") from exc
    if any(written.get(key) != value for key, value in values.items()):
        raise ConfigError(f"[{table}] did not take the values {dict(values)}")
    return result


def _node_toml(
    name: str,
    node: NodeLayout,
    cluster: ClusterConfig,
    data_dir: str,
    anchoring: Mapping[str, object],
) -> str:
    lines = [
        "# BaaS storage node config, written by `baas-cluster init`.",
        "[node]",
        f"name = {_toml_str(name)}",
        f"data_dir = {_toml_str(data_dir)}",
        'identity_file = "identity.key"',
        'api_token_file = "../secrets/node-api.token"',
        f"p2p_listen = {_toml_str(node.p2p_addr)}",
        f"http_listen = {_toml_str(node.http_addr)}",
        "",
        "# Identical on every node of the cluster.",
        "[cluster]",
        f"cluster_id = {_toml_str(cluster.cluster_id)}",
        f"k = {cluster.k}",
        f"n = {cluster.n}",
        f"write_quorum = {cluster.write_quorum}",
    ]
    for member in cluster.members:
        lines += [
            "",
            "[[cluster.members]]",
            f"name = {_toml_str(member.name)}",
            f"peer_id = {_toml_str(member.peer_id)}",
            f"p2p_addr = {_toml_str(member.p2p_addr)}",
            f"http_addr = {_toml_str(member.http_addr)}",
        ]
    lines += ["", "[limits]", "", "[timeouts]", ""]
    return "\n".join(lines) + (_anchoring_toml(anchoring) if anchoring else "")


OPERATORS_FILE = "secrets/operators.json"
PARTNER_USERS_FILE = "secrets/partner_users.json"


def _gateway_toml(
    layout_nodes: list[NodeLayout], host: str, port: int, chain_rpc_url: str = ""
) -> str:
    lines = [
        "# BaaS gateway config, written by `baas-cluster init`.",
        "[gateway]",
        f"http_listen = {_toml_str(f'{host}:{port}')}",
        'keyring_file = "keyring.json"',
        'master_key_file = "secrets/master.key"',
        'node_api_token_file = "secrets/node-api.token"',
    ]
    for node in layout_nodes:
        lines += [
            "",
            "[[nodes]]",
            f"name = {_toml_str(node.name)}",
            f"http_addr = {_toml_str(node.http_addr)}",
        ]
    lines += ["", "[limits]", "", "[timeouts]", ""]
    # The dashboard: operators are added with `baas-dashboard operator add NAME --file
    # secrets/operators.json`; the receipt verifier reads the development chain by default.
    lines += ["[dashboard]", f"operators_file = {_toml_str(OPERATORS_FILE)}"]
    lines += [f"partner_users_file = {_toml_str(PARTNER_USERS_FILE)}"]
    if chain_rpc_url:
        lines.append(f"chain_rpc_url = {_toml_str(chain_rpc_url)}")
    return "\n".join(lines) + "\n"


def _new_node(
    directory: Path, index: int, seed: bytes, p2p_port: int, http_port: int, host: str
) -> NodeLayout:
    name = node_name(index)
    return NodeLayout(
        name,
        peer_id_of_seed(seed),
        p2p_port,
        http_port,
        str(directory / node_config_relpath(name)),
        host,
    )


def init_cluster(
    directory: Path,
    *,
    nodes: int = 5,
    k: int = 3,
    n: int = 5,
    write_quorum: int | None = None,
    partners: tuple[str, ...] = ("demo-shop",),
    base_port: int = 0,
    node_hosts: tuple[str, ...] | None = None,
    gateway_host: str = HOST,
    data_dir: str = "data",
    exist_ok: bool = False,
    chain: str = DEFAULT_CHAIN,
    anchor_nodes: int | None = None,
    chain_host: str = HOST,
    chain_port: int | None = None,
) -> ClusterLayout:
    """Create a new cluster directory. ``base_port=0`` picks free ports (tests).

    ``chain`` (``embedded``, ``anvil`` or ``none``) is the development chain the cluster runs,
    listening on ``chain_host``:``chain_port`` (default: next in the port plan);
    ``anchor_nodes`` (default 3, at most ``nodes``) of the nodes get a chain key.

    ``node_hosts`` (one IP per node; default 127.0.0.1 for all) and ``gateway_host`` are the
    addresses the processes listen on and the others reach them at; ``data_dir`` is each node's
    data directory (relative to its config, or absolute, e.g. a container volume). With
    ``exist_ok`` an existing cluster of the same shape is loaded and returned unchanged.
    """
    if nodes < 1:
        raise ConfigError("a cluster needs at least one node")
    holders = _anchor_node_count(chain, nodes, anchor_nodes)
    if (directory / "cluster.json").exists():
        if not exist_ok:
            raise ConfigError(
                f"{directory} already holds a cluster; refusing to overwrite identities"
            )
        existing = load_layout(directory)
        _require_same_shape(existing, nodes, k, n, base_port, node_hosts, gateway_host)
        if chain != "none" and chain_port is None and base_port != 0:
            chain_port = chain_port_of(nodes, base_port)
        _require_same_chain(existing, chain, chain_host, chain_port, holders)
        return existing
    hosts = node_hosts if node_hosts is not None else (HOST,) * nodes
    if len(hosts) != nodes:
        raise ConfigError(f"{len(hosts)} node hosts given for {nodes} nodes")
    quorum = write_quorum if write_quorum is not None else min(k + 1, n)
    if base_port == 0:
        free = _free_ports(2 * nodes + 2)
        node_ports = tuple((free[2 * i], free[2 * i + 1]) for i in range(nodes))
        gateway_port, planned_chain_port = free[-2], free[-1]
    else:
        node_ports, gateway_port = port_plan(nodes, base_port)
        planned_chain_port = chain_port_of(nodes, base_port)
    parse_host_port(f"{gateway_host}:{gateway_port}", "gateway host")
    chain_port = planned_chain_port if chain_port is None else chain_port
    parse_host_port(f"{chain_host}:{chain_port}", "chain host")
    layouts: list[NodeLayout] = []
    seeds: list[bytes] = []
    for i, ((p2p_port, http_port), host) in enumerate(zip(node_ports, hosts, strict=True)):
        seed = generate_identity_seed()
        seeds.append(seed)
        layouts.append(_new_node(directory, i, seed, p2p_port, http_port, host))
    cluster = ClusterConfig(
        cluster_id=f"baas-{secrets.token_hex(4)}",
        k=k,
        n=n,
        write_quorum=quorum,
        members=tuple(ClusterMember(x.name, x.peer_id, x.p2p_addr, x.http_addr) for x in layouts),
    )
    cluster.validate()  # refuses n > nodes and the like before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    master_key = secrets.token_bytes(32)
    _write_secret(directory / "secrets" / "master.key", master_key.hex() + "\n")
    _write_secret(directory / "secrets" / "node-api.token", secrets.token_urlsafe(32) + "\n")
    keyring = Keyring(version=1, partners={})
    partner_creds: dict[str, dict[str, str]] = {}
    for partner_id in partners:
        partner = new_partner(partner_id, api_key=f"pk_{partner_id}_{secrets.token_hex(6)}")
        keyring = keyring.with_partner(partner)
        credential = partner.credentials[0]
        partner_creds[partner_id] = {
            "api_key": credential.api_key,
            "secret_hex": credential.secret.hex(),
        }
    save_keyring(directory / "keyring.json", keyring, master_key)
    _write_secret(
        directory / "secrets" / "partners.json", json.dumps(partner_creds, indent=2) + "\n"
    )
    chain_layout = _write_chain_keys(
        directory, chain, chain_host, chain_port, [x.name for x in layouts[:holders]]
    )
    for layout, seed in zip(layouts, seeds, strict=True):
        node_dir = directory / layout.name
        node_dir.mkdir(parents=True, exist_ok=True)
        write_identity_file(node_dir / "identity.key", seed)
        anchoring = anchoring_values(
            chain_layout,
            layout.name,
            chain_layout.expected_chain_id,
            chain_layout.expected_contract if chain_layout.enabled else "",
        )
        Path(layout.config_path).write_text(
            _node_toml(layout.name, layout, cluster, data_dir, anchoring)
        )
    (directory / GATEWAY_CONFIG).write_text(
        _gateway_toml(
            layouts,
            gateway_host,
            gateway_port,
            chain_layout.url if chain_layout.enabled else "",
        )
    )
    result = ClusterLayout(
        directory=str(directory),
        cluster_id=cluster.cluster_id,
        k=k,
        n=n,
        write_quorum=quorum,
        nodes=tuple(layouts),
        gateway_port=gateway_port,
        gateway_config_path=str(directory / GATEWAY_CONFIG),
        partners=partner_creds,
        gateway_host=gateway_host,
        chain=chain_layout,
    )
    document = asdict(result)
    document["partners"] = sorted(partner_creds)  # secrets stay in secrets/partners.json only
    (directory / "cluster.json").write_text(json.dumps(document, indent=2) + "\n")
    return result


def _anchor_node_count(chain: str, nodes: int, anchor_nodes: int | None) -> int:
    if chain not in CHAIN_KINDS:
        raise ConfigError(f"chain {chain!r}: expected one of {', '.join(CHAIN_KINDS)}")
    if chain == "none":
        return 0
    if anchor_nodes is None:
        return min(DEFAULT_ANCHOR_NODES, nodes)
    if not 1 <= anchor_nodes <= nodes:
        raise ConfigError(f"anchor_nodes must be in 1..{nodes} (the nodes), got {anchor_nodes}")
    return anchor_nodes


def _write_chain_keys(
    directory: Path, kind: str, host: str, port: int, holders: list[str]
) -> ChainLayout:
    """Write the owner's and each holder's chain key (0600); only addresses are kept."""
    if kind == "none":
        return ChainLayout()
    owner = write_key_file(directory / CHAIN_OWNER_KEY)
    for name in holders:
        write_key_file(directory / chain_key_relpath(name))
    return ChainLayout(kind, host, port, tuple(holders), owner.address)


def _existing_anchoring(layout: ClusterLayout) -> dict[str, object]:
    """The first node's ``[anchoring]`` table without its key: what a new node points at."""
    if not layout.nodes:
        return {}
    table = read_toml(Path(layout.nodes[0].config_path)).get("anchoring", {})
    return {key: value for key, value in table.items() if key != "key_file"}


def add_node(directory: Path, *, host: str = HOST, data_dir: str = "data") -> NodeLayout:
    """Prepare one more node for a running cluster: identity, ports, a ``join_existing`` config.

    Its member list is the cluster's plus itself (so it can reach the others at once); the
    others learn about it when an operator adds it through the log (``baas-cluster
    add-node`` posts it to a node's ``/internal/v1/members``). ``cluster.json`` lists it.
    """
    layout = load_layout(directory)
    seed = generate_identity_seed()
    p2p_port, http_port = _free_ports(2)
    node = _new_node(directory, len(layout.nodes), seed, p2p_port, http_port, host)
    name = node.name
    nodes = (*layout.nodes, node)
    cluster = ClusterConfig(
        cluster_id=layout.cluster_id,
        k=layout.k,
        n=layout.n,
        write_quorum=layout.write_quorum,
        members=tuple(ClusterMember(x.name, x.peer_id, x.p2p_addr, x.http_addr) for x in nodes),
    )
    cluster.validate()
    node_dir = directory / name
    node_dir.mkdir(parents=True, exist_ok=False)
    write_identity_file(node_dir / "identity.key", seed)
    config = _node_toml(name, node, cluster, data_dir, _existing_anchoring(layout))
    config += "\n[raft]\n# Joins a running cluster; never bootstraps one of its own.\n"
    config += "join_existing = true\n"
    Path(node.config_path).write_text(config)
    document = json.loads((directory / "cluster.json").read_text())
    document["nodes"].append(asdict(node))
    (directory / "cluster.json").write_text(json.dumps(document, indent=2) + "\n")
    return node


def load_layout(directory: Path) -> ClusterLayout:
    try:
        document = json.loads((directory / "cluster.json").read_text())
        partners = json.loads((directory / "secrets" / "partners.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{directory} is not an initialised cluster: {exc}") from exc
    return ClusterLayout(
        directory=document["directory"],
        cluster_id=document["cluster_id"],
        k=document["k"],
        n=document["n"],
        write_quorum=document["write_quorum"],
        nodes=tuple(NodeLayout(**node) for node in document["nodes"]),
        gateway_port=document["gateway_port"],
        gateway_config_path=document["gateway_config_path"],
        partners=partners,
        gateway_host=document.get("gateway_host", HOST),
        chain=_chain_from(document.get("chain")),
    )


def _chain_from(raw: object) -> ChainLayout:
    """The chain entry of ``cluster.json``; none for clusters made before chains were."""
    if raw is None:
        return ChainLayout()
    if not isinstance(raw, dict) or raw.get("kind") not in CHAIN_KINDS:
        raise ConfigError(f"cluster.json: chain {raw!r} is not a chain layout")
    return ChainLayout(**{**raw, "anchor_nodes": tuple(raw.get("anchor_nodes", ()))})


def _require_same_shape(
    layout: ClusterLayout,
    nodes: int,
    k: int,
    n: int,
    base_port: int,
    node_hosts: tuple[str, ...] | None,
    gateway_host: str,
) -> None:
    """Refuse an existing cluster that differs from what was asked for (never rewrite it)."""
    hosts = node_hosts if node_hosts is not None else (HOST,) * nodes
    asked: dict[str, object] = {
        "nodes": nodes,
        "k": k,
        "n": n,
        "node hosts": tuple(hosts),
        "gateway host": gateway_host,
    }
    found: dict[str, object] = {
        "nodes": len(layout.nodes),
        "k": layout.k,
        "n": layout.n,
        "node hosts": tuple(node.host for node in layout.nodes),
        "gateway host": layout.gateway_host,
    }
    if base_port != 0:
        asked["ports"] = port_plan(nodes, base_port)
        found["ports"] = (
            tuple((node.p2p_port, node.http_port) for node in layout.nodes),
            layout.gateway_port,
        )
    differ = [key for key in asked if asked[key] != found[key]]
    if differ:
        raise ConfigError(
            f"{layout.directory} already holds a different cluster ({', '.join(differ)} differ); "
            "refusing to overwrite identities"
        )


def _require_same_chain(
    layout: ClusterLayout, kind: str, host: str, port: int | None, holders: int
) -> None:
    """Refuse an existing cluster whose chain differs from the one asked for."""
    found = layout.chain
    asked_port = found.port if port is None or kind == "none" else port
    asked = (kind, host if kind != "none" else found.host, asked_port, holders)
    if asked != (found.kind, found.host, found.port, len(found.anchor_nodes)):
        raise ConfigError(
            f"{layout.directory} already holds a cluster with another chain "
            f"({found.kind} at {found.host}:{found.port}, {len(found.anchor_nodes)} key holders); "
            "refusing to overwrite identities"
        )
