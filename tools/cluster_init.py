"""``baas-cluster init``: lay out a cluster once -- identities, per-node TOML, gateway, keyring.

Writes, under the cluster directory::

    cluster.json               what was made: nodes, ports, peer ids, k, n (for tools and tests)
    secrets/master.key         keyring master key (0600; or give BAAS_MASTER_KEY instead)
    secrets/node-api.token     bearer token gateways use on node APIs (0600)
    secrets/partners.json      API key + secret of each partner, for the operator to hand out (0600)
    keyring.json               partner keys, encrypted under the master key
    gateway.toml               the gateway's config
    node-<i>/node.toml         each node's config (identical [cluster] table on every node)
    node-<i>/identity.key      each node's Ed25519 libp2p identity seed (0600)

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
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.keyring import Keyring, new_partner, save_keyring
from node.config import ClusterConfig, ClusterMember, parse_host_port
from node.errors import ConfigError
from node.p2p.identity import generate_identity_seed, peer_id_of_seed, write_identity_file

__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_K",
    "DEFAULT_N",
    "DEFAULT_NODES",
    "GATEWAY_CONFIG",
    "HOST",
    "ClusterLayout",
    "NodeLayout",
    "init_cluster",
    "load_layout",
    "node_config_relpath",
    "node_name",
    "port_plan",
]

HOST = "127.0.0.1"
DEFAULT_NODES = 5
DEFAULT_K = 3
DEFAULT_N = 5
DEFAULT_BASE_PORT = 7100
GATEWAY_CONFIG = "gateway.toml"


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


def _node_toml(name: str, node: NodeLayout, cluster: ClusterConfig, data_dir: str) -> str:
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
    return "\n".join(lines)


def _gateway_toml(layout_nodes: list[NodeLayout], host: str, port: int) -> str:
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
    return "\n".join(lines)


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
) -> ClusterLayout:
    """Create a new cluster directory. ``base_port=0`` picks free ports (tests).

    ``node_hosts`` (one IP per node; default 127.0.0.1 for all) and ``gateway_host`` are the
    addresses the processes listen on and the others reach them at; ``data_dir`` is each node's
    data directory (relative to its config, or absolute, e.g. a container volume). With
    ``exist_ok`` an existing cluster of the same shape is loaded and returned unchanged.
    """
    if (directory / "cluster.json").exists():
        if not exist_ok:
            raise ConfigError(
                f"{directory} already holds a cluster; refusing to overwrite identities"
            )
        existing = load_layout(directory)
        _require_same_shape(existing, nodes, k, n, base_port, node_hosts, gateway_host)
        return existing
    if nodes < 1:
        raise ConfigError("a cluster needs at least one node")
    hosts = node_hosts if node_hosts is not None else (HOST,) * nodes
    if len(hosts) != nodes:
        raise ConfigError(f"{len(hosts)} node hosts given for {nodes} nodes")
    quorum = write_quorum if write_quorum is not None else min(k + 1, n)
    if base_port == 0:
        free = _free_ports(2 * nodes + 1)
        node_ports = tuple((free[2 * i], free[2 * i + 1]) for i in range(nodes))
        gateway_port = free[-1]
    else:
        node_ports, gateway_port = port_plan(nodes, base_port)
    parse_host_port(f"{gateway_host}:{gateway_port}", "gateway host")
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
    for layout, seed in zip(layouts, seeds, strict=True):
        node_dir = directory / layout.name
        node_dir.mkdir(parents=True, exist_ok=True)
        write_identity_file(node_dir / "identity.key", seed)
        Path(layout.config_path).write_text(_node_toml(layout.name, layout, cluster, data_dir))
    (directory / GATEWAY_CONFIG).write_text(_gateway_toml(layouts, gateway_host, gateway_port))
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
    )
    document = asdict(result)
    document["partners"] = sorted(partner_creds)  # secrets stay in secrets/partners.json only
    (directory / "cluster.json").write_text(json.dumps(document, indent=2) + "\n")
    return result


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
    config = _node_toml(name, node, cluster, data_dir)
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
    )


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
