"""The compose file and the local cluster tool describe one cluster, and cannot drift apart.

No Docker engine runs here, so the compose side is checked by running the exact ``init`` command
its ``init`` service runs (into a temporary directory instead of its volume) and comparing the
result, service by service, with the compose file and with what the local tool
(``baas-cluster init``/``run`` with their defaults) makes. Every check is shown to fail on a
one-sided change, so the checker itself is tested.
"""

from __future__ import annotations

import copy
import importlib
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import load_node_config
from node.errors import ConfigError
from tools import cluster_cli
from tools.cluster_init import ClusterLayout, init_cluster, load_layout
from tools.compose import ComposeSpec, compose_drift, compose_yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.cluster.yml"
Compose = dict[str, Any]


def _compose() -> Compose:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def _init_command(compose: Compose) -> list[str]:
    return [str(part) for part in compose["services"]["init"]["command"]]


def _run_init(command: list[str], directory: Path) -> ClusterLayout:
    """Run a compose init command (``baas-cluster init ...``) with ``--dir`` moved to here."""
    assert command[:2] == ["baas-cluster", "init"], command
    argv = list(command[1:])
    argv[argv.index("--dir") + 1] = str(directory)
    assert cluster_cli.main(argv) == 0
    return load_layout(directory)


def _local(directory: Path, *extra: str) -> ClusterLayout:
    """What the local tool makes: ``baas-cluster init`` with its defaults (as ``run`` does)."""
    assert cluster_cli.main(["init", "--dir", str(directory), *extra]) == 0
    return load_layout(directory)


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClusterLayout, ClusterLayout, Path]:
    local = _local(tmp_path_factory.mktemp("local"))
    container_dir = tmp_path_factory.mktemp("container")
    container = _run_init(_init_command(_compose()), container_dir)
    return local, container, container_dir


# ------------------------------------------------------------------ the two sides agree


def test_committed_compose_file_is_the_rendering_of_the_layout_code() -> None:
    assert COMPOSE_FILE.read_text() == compose_yaml(ComposeSpec()), (
        "docker-compose.cluster.yml is stale: run `baas-cluster compose --out "
        "docker-compose.cluster.yml`"
    )
    # and a change of the tool's parameters changes the rendering
    assert compose_yaml(ComposeSpec(base_port=7200)) != COMPOSE_FILE.read_text()
    assert compose_yaml(ComposeSpec(k=2)) != COMPOSE_FILE.read_text()


def test_compose_and_local_tool_describe_the_same_cluster(
    sides: tuple[ClusterLayout, ClusterLayout, Path],
) -> None:
    local, container, container_dir = sides
    compose = _compose()
    assert compose_drift(compose, local, container, container_dir) == []
    services = compose["services"]
    node_services = sorted(n for n, s in services.items() if s["command"][0] == "baas-node")
    assert node_services == [f"node-{i}" for i in range(1, 6)] == [n.name for n in local.nodes]
    assert services["gateway"]["command"][0] == "baas-gateway"
    assert (container.k, container.n, local.k, local.n) == (3, 5, 3, 5)
    assert [(n.p2p_port, n.http_port) for n in container.nodes] == [
        (7100 + 2 * i, 7101 + 2 * i) for i in range(5)
    ]
    assert container.gateway_port == local.gateway_port == 7110
    assert container.chain.url == "http://172.28.0.9:8545"
    assert services["chain"]["command"][:2] == ["baas-chain", "serve"]
    # Peer ids live only in the init volume: the compose file names none of them.
    text = COMPOSE_FILE.read_text()
    assert not any(node.peer_id in text for node in container.nodes)
    assert "12D3KooW" not in text


def test_local_defaults_are_unchanged_by_the_container_options(
    sides: tuple[ClusterLayout, ClusterLayout, Path],
) -> None:
    local, _, _ = sides
    config = load_node_config(Path(local.nodes[0].config_path))
    assert config.node.p2p_listen == "/ip4/127.0.0.1/tcp/7100"
    assert config.node.http_listen == "127.0.0.1:7101"
    assert config.node.data_dir == Path(local.nodes[0].config_path).parent.resolve() / "data"
    assert local.gateway_url == "http://127.0.0.1:7110"
    assert (local.chain.kind, local.chain.url) == ("embedded", "http://127.0.0.1:7111")
    assert local.chain.anchor_nodes == ("node-1", "node-2", "node-3")
    gateway_toml = tomllib.loads(Path(local.gateway_config_path).read_text())
    assert gateway_toml["gateway"]["http_listen"] == "127.0.0.1:7110"


# ------------------------------------------------------------------ one-sided changes are caught


def _service(name: str) -> Callable[[Compose], dict[str, Any]]:
    return lambda compose: compose["services"][name]


def _set_published(compose: Compose, name: str, port: int) -> None:
    compose["services"][name]["ports"][0].update(target=port, published=str(port))


def _set_option(compose: Compose, name: str, flag: str, value: str) -> None:
    command = compose["services"][name]["command"]
    command[command.index(flag) + 1] = value


def _swap_configs(compose: Compose) -> None:
    one, two = compose["services"]["node-1"], compose["services"]["node-2"]
    one["command"], two["command"] = two["command"], one["command"]


MUTATIONS: dict[str, tuple[Callable[[Compose], None], str]] = {
    "node http port": (lambda c: _set_published(c, "node-2", 7203), "node-2: publishes"),
    "node p2p port": (
        lambda c: _service("node-3")(c).update(expose=["7204", "7105"]),
        "node-3: exposes",
    ),
    "gateway port": (lambda c: _set_published(c, "gateway", 7111), "gateway: does not publish"),
    "dropped node": (lambda c: c["services"].pop("node-4"), "node-4: cluster member without"),
    "extra node": (
        lambda c: c["services"].update({"node-6": copy.deepcopy(c["services"]["node-5"])}),
        "node-6: a node service that is not a cluster member",
    ),
    "dropped gateway": (lambda c: c["services"].pop("gateway"), "gateway: no gateway service"),
    "node address": (
        lambda c: _service("node-1")(c)["networks"]["baas"].update(ipv4_address="172.28.0.99"),
        "node-1: ipv4_address",
    ),
    "config of another node": (_swap_configs, "node-1: its config dir's identity is"),
    "writable config": (
        lambda c: _service("node-5")(c)["volumes"][0].update(read_only=False),
        "node-5: the cluster config /cluster is not mounted read-only",
    ),
    "no data volume": (
        lambda c: _service("node-2")(c)["volumes"].pop(1),
        "node-2: data dir /var/lib/baas is not a mounted volume",
    ),
    "gateway config": (
        lambda c: _service("gateway")(c).update(command=["baas-gateway", "--config", "/x.toml"]),
        "gateway: command",
    ),
    "init dropped": (lambda c: c["services"].pop("init"), "no init service"),
    "dropped chain": (lambda c: c["services"].pop("chain"), "chain: no chain service"),
    "chain port": (
        lambda c: _set_option(c, "chain", "--port", "8546"),
        "chain: command",
    ),
    "chain address": (
        lambda c: _service("chain")(c)["networks"]["baas"].update(ipv4_address="172.28.0.8"),
        "chain: ipv4_address",
    ),
    "chain setup dropped": (
        lambda c: c["services"].pop("chain-setup"),
        "chain-setup: no service running baas-cluster chain-setup",
    ),
    "node not waiting for the registry": (
        lambda c: _service("node-2")(c)["depends_on"].pop("chain-setup"),
        "node-2: does not wait for chain-setup",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_changed_compose_file_is_reported(
    mutation: str, sides: tuple[ClusterLayout, ClusterLayout, Path]
) -> None:
    local, container, container_dir = sides
    compose = copy.deepcopy(_compose())
    change, expected = MUTATIONS[mutation]
    change(compose)
    problems = compose_drift(compose, local, container, container_dir)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--k", "4", "k: local tool 3, compose 4"),
        ("--n", "4", "n: local tool 5, compose 4"),
        ("--base-port", "7200", "nodes/ports"),
        ("--chain-port", "8546", "chain: command"),
        ("--chain-host", "172.28.0.8", "chain: command"),
    ],
)
def test_a_changed_compose_init_command_is_reported(
    flag: str,
    value: str,
    expected: str,
    sides: tuple[ClusterLayout, ClusterLayout, Path],
    tmp_path: Path,
) -> None:
    local, _, _ = sides
    compose = copy.deepcopy(_compose())
    command = _init_command(compose)
    command[command.index(flag) + 1] = value
    compose["services"]["init"]["command"] = command
    changed = _run_init(command, tmp_path)
    problems = compose_drift(compose, local, changed, tmp_path)
    assert any(expected in problem for problem in problems), problems


def test_fewer_nodes_in_the_compose_init_command_is_reported(
    sides: tuple[ClusterLayout, ClusterLayout, Path], tmp_path: Path
) -> None:
    local, _, _ = sides
    compose = copy.deepcopy(_compose())
    command = _init_command(compose)
    command[command.index("--nodes") + 1] = "4"
    hosts = command[command.index("--node-hosts") + 1].split(",")
    command[command.index("--node-hosts") + 1] = ",".join(hosts[:4])
    command[command.index("--n") + 1] = "4"
    changed = _run_init(command, tmp_path)
    problems = compose_drift(compose, local, changed, tmp_path)
    assert any("node-5: a node service that is not a cluster member" in p for p in problems)
    assert any(p.startswith("nodes/ports") for p in problems), problems


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--k", "4"), "k: local tool 4, compose 3"),
        (("--base-port", "7300"), "nodes/ports"),
        (("--nodes", "6"), "nodes/ports"),
        (("--n", "4"), "n: local tool 4, compose 5"),
        (("--chain", "none"), "chain: local tool none, compose embedded"),
        (("--anchor-nodes", "2"), "anchor nodes: local tool ['node-1', 'node-2']"),
    ],
)
def test_a_changed_local_tool_is_reported(
    extra: tuple[str, ...],
    expected: str,
    sides: tuple[ClusterLayout, ClusterLayout, Path],
    tmp_path: Path,
) -> None:
    _, container, container_dir = sides
    changed_local = _local(tmp_path, *extra)
    problems = compose_drift(_compose(), changed_local, container, container_dir)
    assert any(expected in problem for problem in problems), problems


# ------------------------------------------------------------------ init for containers


def test_init_exist_ok_keeps_identities_and_refuses_another_shape(tmp_path: Path) -> None:
    spec = ComposeSpec()
    hosts = tuple(spec.node_host(i) for i in range(spec.nodes))
    first = init_cluster(tmp_path, base_port=7100, node_hosts=hosts, gateway_host="172.28.0.10")
    again = init_cluster(
        tmp_path, base_port=7100, node_hosts=hosts, gateway_host="172.28.0.10", exist_ok=True
    )
    assert [n.peer_id for n in again.nodes] == [n.peer_id for n in first.nodes]
    assert again.gateway_url == "http://172.28.0.10:7110"
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_cluster(tmp_path, base_port=7100, node_hosts=hosts, gateway_host="172.28.0.10")
    with pytest.raises(ConfigError, match="k differ"):
        init_cluster(
            tmp_path,
            k=2,
            base_port=7100,
            node_hosts=hosts,
            gateway_host="172.28.0.10",
            exist_ok=True,
        )
    with pytest.raises(ConfigError, match="node hosts differ"):
        init_cluster(tmp_path, base_port=7100, exist_ok=True, gateway_host="172.28.0.10")
    with pytest.raises(ConfigError, match="ports differ"):
        init_cluster(
            tmp_path, base_port=7000, node_hosts=hosts, gateway_host="172.28.0.10", exist_ok=True
        )


def test_init_refuses_bad_hosts_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="2 node hosts given for 5 nodes"):
        init_cluster(tmp_path / "a", node_hosts=("10.0.0.1", "10.0.0.2"))
    with pytest.raises(ConfigError, match="host must be an IP address"):
        init_cluster(tmp_path / "b", node_hosts=("node-1",) * 5)
    with pytest.raises(ConfigError, match="host must be an IP address"):
        init_cluster(tmp_path / "c", gateway_host="gateway")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ Dockerfile and entrypoints


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(text):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _args(text: str) -> dict[str, str]:
    pairs = [rest.split("=", 1) for kw, rest in _instructions(text) if kw == "ARG" and "=" in rest]
    return {key: value for key, value in pairs}


def test_dockerfile_builds_one_small_non_root_image_of_this_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    build, runtime = _stages(text)
    base = _args(text)["PYTHON_IMAGE"]
    assert base.startswith("python:3.11-slim"), base
    assert build[0][1] == "${PYTHON_IMAGE} AS build" and runtime[0][1].startswith("${PYTHON_IMAGE}")
    build_runs = " ".join(rest for kw, rest in build if kw == "RUN")
    for package in ("build-essential", "libgmp-dev", "python3-dev"):
        assert package in build_runs
    # The project itself is installed (non-editable) from the copied pyproject.
    copies = [rest.split() for kw, rest in build if kw == "COPY"]
    assert ["pyproject.toml", "README.md", "./"] in copies
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    for package in packages:
        assert [package, f"./{package}"] in copies, package
    assert re.search(r"pip install \.( |$)", build_runs), build_runs
    # The runtime stage: no compiler, the venv from the build stage, a non-root user.
    runtime_runs = " ".join(rest for kw, rest in runtime if kw == "RUN")
    assert "build-essential" not in runtime_runs and "libgmp10" in runtime_runs
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # Named volumes take the owner of their mount point in the image.
    spec = ComposeSpec()
    assert f"mkdir -p {spec.cluster_dir} {spec.data_dir}" in runtime_runs
    assert f"chown baas:baas {spec.cluster_dir} {spec.data_dir}" in runtime_runs
    # .dockerignore lets every COPY source through.
    ignore = (ROOT / ".dockerignore").read_text().split()
    for source in [part for parts in copies for part in parts[:-1]]:
        assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, source


def test_every_compose_command_is_a_console_script_of_this_project() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    services = _compose()["services"]
    images = {service["image"] for service in services.values()}
    assert len(images) == 1, images  # one image
    for name, service in services.items():
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        command = service["command"]
        assert command[0] in scripts, (name, command)
        module, _, function = scripts[command[0]].partition(":")
        assert callable(getattr(importlib.import_module(module), function)), scripts[command[0]]
        probe = service.get("healthcheck", {}).get("test", ["CMD", "python"])
        assert probe[:2] == ["CMD", "python"], probe


def test_compose_command_writes_the_committed_file_and_init_service_reruns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compose.yml"
    assert cluster_cli.main(["compose", "--out", str(out)]) == 0
    assert out.read_text() == COMPOSE_FILE.read_text()
    assert cluster_cli.main(["compose"]) == 0
    assert capsys.readouterr().out.endswith(COMPOSE_FILE.read_text())
    # `docker compose up` runs the init service every time: the second run keeps the identities.
    first = _run_init(_init_command(_compose()), tmp_path / "cluster")
    second = _run_init(_init_command(_compose()), tmp_path / "cluster")
    assert [n.peer_id for n in second.nodes] == [n.peer_id for n in first.nodes]
