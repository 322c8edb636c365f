"""The development chain of a local cluster: its process, the registry on it, the nodes' view.

``baas-cluster init`` records the chain in the layout (:class:`tools.cluster_init.ChainLayout`)
and writes each node's ``[anchoring]`` table; this module runs it. :class:`LocalCluster` starts
the chain before any node and stops it after the last one:

* ``embedded``: ``python -m tools.chain_cli serve`` (eth-tester behind JSON-RPC, nothing to
  install); ``anvil``: the pinned anvil binary (``./dev setup`` installs it under
  ``contracts/node_modules``; ``BAAS_ANVIL`` overrides the path). Both mine a block every
  second (``--block-time 1``) so confirmations advance while nobody anchors.
* :func:`setup_registry` then tops up the owner and every key holder from the chain's dev
  account, deploys the AnchorRegistry allowing the key holders (or, when the owner's registry is
  already on the chain, allows any holder it lacks), and rewrites ``chain_id``/``contract`` in
  the node TOMLs that name others. It is what ``baas-cluster chain-setup`` runs (the compose
  file's one-shot ``chain-setup`` service).

Both chains keep their state in memory only: a cluster started again gets a new, empty chain and
a new registry (at the same address, the owner's first transaction). The nodes' logs still hold
their earlier anchors, which that chain no longer has, so these chains are for development; a
cluster whose anchors must last points its nodes at a real network instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from web3 import Web3

from node.anchoring.chain import (
    AnchorChain,
    ChainMisconfigured,
    ChainUnavailable,
    balance,
    connect_web3,
    deploy_registry,
    fund,
    read_chain_id,
    set_submitter,
)
from node.anchoring.keyfile import load_key_file
from node.errors import ConfigError
from tools.cluster_init import (
    ANVIL_CHAIN_ID,
    CHAIN_BLOCK_TIME_S,
    CHAIN_OWNER_KEY,
    ChainLayout,
    ClusterLayout,
    chain_key_relpath,
    set_toml_keys,
)

__all__ = [
    "CHAIN_START_S_MAX",
    "Anvil",
    "RegistryOnChain",
    "anvil_path",
    "chain_command",
    "free_port",
    "point_nodes_at",
    "running_anvil",
    "setup_registry",
    "start_chain",
    "stop_process",
    "top_up",
    "wait_until_answering",
]

REPO = Path(__file__).resolve().parent.parent
CHAIN_START_S_MAX = 30.0  # the embedded chain imports web3 and eth-tester first (~1 s)
FUND_WEI = 100 * 10**18  # thousands of anchors
FUND_BELOW_WEI = 10**18


def anvil_path() -> Path:
    """The pinned anvil binary (``BAAS_ANVIL`` overrides)."""
    override = os.environ.get("BAAS_ANVIL")
    if override:
        return Path(override)
    found = sorted((REPO / "contracts" / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))
    executable = [path for path in found if os.access(path, os.X_OK)]
    if not executable:
        raise ConfigError("anvil not found under contracts/node_modules: run ./dev setup")
    return executable[0]


def chain_command(chain: ChainLayout, block_time_s: float = CHAIN_BLOCK_TIME_S) -> list[str]:
    """The command line that serves ``chain`` on its host and port."""
    where = ["--host", chain.host, "--port", str(chain.port), "--block-time", f"{block_time_s:g}"]
    if chain.kind == "embedded":
        return [sys.executable, "-m", "tools.chain_cli", "serve", *where]
    if chain.kind == "anvil":
        # --mixed-mining: mine each transaction at once too, as the embedded chain does
        anvil = [str(anvil_path()), *where, "--mixed-mining", "--chain-id", str(ANVIL_CHAIN_ID)]
        return [*anvil, "--silent"]
    raise ConfigError(f"chain {chain.kind!r} has no process")


def _answers(url: str, timeout_s: float) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return "result" in json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False


def wait_until_answering(
    url: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout_s: float = CHAIN_START_S_MAX,
) -> None:
    """Return once ``url`` answers ``eth_chainId``; ChainUnavailable if ``process`` exits first
    or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not _answers(url, timeout_s=0.5):
        if process is not None and process.poll() is not None:
            raise ChainUnavailable(f"{url}: the chain process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise ChainUnavailable(f"{url} did not answer within {timeout_s} s")
        time.sleep(0.05)


def start_chain(chain: ChainLayout, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``chain``'s process (output to ``log``) and wait until it answers."""
    process = subprocess.Popen(
        chain_command(chain),
        cwd=REPO,  # ``-m tools.chain_cli`` from an editable checkout
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # a Ctrl-C in the terminal reaches us; we stop it last
    )
    try:
        wait_until_answering(chain.url, process)
    except ChainUnavailable:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr is not None:
        process.stderr.close()
    return int(process.returncode)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Anvil:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@contextmanager
def running_anvil(block_time_s: float | None = None) -> Iterator[Anvil]:
    """A real anvil on a free loopback port (automine, or interval mining every
    ``block_time_s``); stopped on exit. ``evm_setAutomine false`` makes it mine on demand."""
    for _ in range(3):  # a free port can be taken between probing and anvil binding it
        port = free_port()
        command = [
            str(anvil_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(ANVIL_CHAIN_ID),
            "--silent",
        ]
        if block_time_s is not None:
            command += ["--block-time", str(block_time_s)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_answering(url, process)
        except ChainUnavailable:
            stop_process(process)
            continue
        try:
            yield Anvil(url=url, port=port, process=process)
        finally:
            stop_process(process)
        return
    raise RuntimeError("anvil did not start on three free ports")


def top_up(w3: Web3, addresses: list[str]) -> None:
    """Give every account below 1 ETH 100 ETH from the chain's first dev account (a
    development chain only: a real network has no unlocked account to fund from)."""
    for address in addresses:
        if balance(w3, address) < FUND_BELOW_WEI:
            fund(w3, address, FUND_WEI)


@dataclass(frozen=True, slots=True)
class RegistryOnChain:
    """The registry a cluster's nodes anchor to; ``deployed`` is False when it was there."""

    url: str
    chain_id: int
    contract: str
    owner: str
    submitters: tuple[str, ...]
    deployed: bool


def setup_registry(layout: ClusterLayout, wait_s: float = CHAIN_START_S_MAX) -> RegistryOnChain:
    """Make the layout's chain ready for its nodes (see the module docstring); waits up to
    ``wait_s`` for the chain to answer. Idempotent."""
    chain = layout.chain
    if not chain.enabled:
        raise ConfigError(f"{layout.directory}: the cluster has no chain (chain = none)")
    directory = Path(layout.directory)
    owner = load_key_file(directory / CHAIN_OWNER_KEY)
    submitters = [
        load_key_file(directory / chain_key_relpath(name)).address for name in chain.anchor_nodes
    ]
    wait_until_answering(chain.url, timeout_s=wait_s)
    w3 = connect_web3(chain.url)
    chain_id = read_chain_id(w3)
    top_up(w3, [owner.address, *submitters])
    contract = _configured_contract(layout) or chain.expected_contract
    if _owned_registry(w3, contract, owner.address):
        registry = AnchorChain(w3, contract)
        for address in submitters:
            if not registry.is_submitter(address):
                set_submitter(w3, contract, owner, address, True)
        deployed = False
    else:  # a new chain: deploy (at the expected address unless the owner has sent before)
        contract = deploy_registry(w3, owner, submitters)
        deployed = True
    point_nodes_at(layout, chain_id, contract)
    return RegistryOnChain(
        chain.url, chain_id, contract, owner.address, tuple(submitters), deployed
    )


def _configured_contract(layout: ClusterLayout) -> str | None:
    """The registry the first anchoring node's config names."""
    for node in layout.nodes:
        table = _anchoring_table(Path(node.config_path))
        if table.get("enabled") is True and isinstance(table.get("contract"), str):
            return str(table["contract"])
    return None


def _owned_registry(w3: Web3, contract: str, owner: str) -> bool:
    """Whether ``contract`` is a registry that ``owner`` owns on this chain."""
    registry = AnchorChain(w3, contract)
    try:
        registry.check_contract()
    except ChainMisconfigured:
        return False
    return registry.owner() == owner


def _anchoring_table(path: Path) -> dict[str, object]:
    try:
        table = tomllib.loads(path.read_text()).get("anchoring", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return table if isinstance(table, dict) else {}


def point_nodes_at(layout: ClusterLayout, chain_id: int, contract: str) -> list[str]:
    """Set ``chain_id`` and ``contract`` in every node TOML that names others (an ``[anchoring]``
    table with ``enabled = true``); returns the nodes rewritten."""
    rewritten = []
    for node in layout.nodes:
        path = Path(node.config_path)
        text = path.read_text()
        table = _anchoring_table(path)
        if table.get("enabled") is not True:
            continue
        if (table.get("chain_id"), table.get("contract")) == (chain_id, contract):
            continue
        values = {"chain_id": chain_id, "contract": contract}
        _replace_text(path, set_toml_keys(text, "anchoring", values))
        rewritten.append(node.name)
    return rewritten


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a node starting meanwhile reads one or the other)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
