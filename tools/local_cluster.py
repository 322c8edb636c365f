"""Run a cluster on this machine: every node and the gateway as its own OS process.

Used by ``baas-cluster run`` (the README's quick start) and by the integration tests. Each
process gets its own data dir and ports (from ``baas-cluster init``), logs to
``<cluster>/logs/<name>.log``, and is waited on until its readiness endpoint answers.
``stop`` sends SIGTERM and waits (then SIGKILL); ``kill`` sends any signal, e.g. SIGKILL to
simulate a crash, and ``start_node`` brings a node back with the same identity and data.
``node_groups`` runs named nodes with another primary group id (still as this user): its
sockets then carry that gid, which is how ``baas-chaos`` tells nodes apart in iptables rules.

A cluster with a chain (``baas-cluster init --chain embedded|anvil``, the default embedded)
starts it first, as process ``chain`` (log ``logs/chain.log``), deploys the registry and points
the node configs at it (``tools/local_chain.py``), deploys the test-mode deposit vault and writes
the nodes' ``[deposits]`` (``tools/local_vault.py``), and stops it after the last node.
``chain_url``, ``chain_id`` and ``chain_contract`` say where the nodes anchor; all three are
None before ``start`` and for ``chain = none``. The chain is in memory only: every ``start``
brings up a new one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from node.errors import BaasError, OperationFailed
from tools.cluster_init import ClusterLayout, NodeLayout
from tools.local_chain import RegistryOnChain, setup_registry, start_chain, stop_process
from tools.local_vault import VaultOnChain, setup_vault

__all__ = ["LocalCluster"]

READY_TIMEOUT_S = 60.0  # a node imports web3 and more: ~18 s on a box at load 20
CHAIN = "chain"  # the chain's process name (and log file)


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LocalCluster:
    def __init__(
        self,
        layout: ClusterLayout,
        *,
        log_level: str = "INFO",
        ready_timeout_s: float = READY_TIMEOUT_S,
        node_groups: Mapping[str, int] | None = None,
    ) -> None:
        self.layout = layout
        # How long a started process may take to answer ready (a box shared with other test
        # runs may take longer than READY_TIMEOUT_S to start a node).
        self.ready_timeout_s = ready_timeout_s
        self._groups = dict(node_groups or {})
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._log_level = log_level
        self._log_dir = Path(layout.directory) / "logs"
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.registry: RegistryOnChain | None = None
        self.vault: VaultOnChain | None = None  # the test-mode deposit vault (tools/local_vault.py)
        self.deposits_settings: dict[str, object] = {}  # more [deposits] keys for the nodes

    @property
    def chain_url(self) -> str | None:
        return None if self.registry is None else self.registry.url

    @property
    def chain_id(self) -> int | None:
        return None if self.registry is None else self.registry.chain_id

    @property
    def chain_contract(self) -> str | None:
        return None if self.registry is None else self.registry.contract

    @property
    def chain_process(self) -> subprocess.Popen[bytes] | None:
        """The chain's process (None without a chain or before ``start_chain``)."""
        return self._processes.get(CHAIN)

    def node(self, name: str) -> NodeLayout:
        for node in self.layout.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def _spawn(self, name: str, module: str, config_path: str) -> None:
        if name in self._processes and self._processes[name].poll() is None:
            raise OperationFailed(f"{name} is already running")
        self._reap(name)  # a previous run's log handle
        log = open(self._log_dir / f"{name}.log", "ab")  # noqa: SIM115 -- closed in _reap
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._logs[name] = log
        self._processes[name] = subprocess.Popen(
            [sys.executable, "-m", module, "--config", config_path, "--log-level", self._log_level],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            group=self._groups.get(name),
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, we stop them in order
        )

    def _wait_ready(self, name: str, url: str, timeout_s: float | None = None) -> None:
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        process = self._processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise OperationFailed(
                    f"{name} exited with {process.returncode}; "
                    f"see {self._log_dir / (name + '.log')}"
                )
            if _is_ready(url):
                return
            time.sleep(0.1)
        raise OperationFailed(
            f"{name} not ready after {timeout_s} s; see {self._log_dir / (name + '.log')}"
        )

    def start_node(
        self, name: str, *, wait: bool = True, ready_timeout_s: float | None = None
    ) -> None:
        node = self.node(name)
        self._spawn(name, "node.main", node.config_path)
        if wait:
            self._wait_ready(name, f"http://{node.http_addr}/internal/v1/ready", ready_timeout_s)

    def start_chain(self) -> None:
        """Start the layout's chain, deploy the registry, point the node configs at it (no-op
        for ``chain = none``)."""
        if not self.layout.chain.enabled:
            return
        if self.running(CHAIN):
            raise OperationFailed("the chain is already running")
        log = open(self._log_dir / f"{CHAIN}.log", "ab")  # noqa: SIM115 -- closed in _reap
        self._logs[CHAIN] = log
        where = f"see {self._log_dir / (CHAIN + '.log')}"
        try:
            self._processes[CHAIN] = start_chain(self.layout.chain, log)
        except BaasError as exc:
            self._reap(CHAIN)
            kind = self.layout.chain.kind
            raise OperationFailed(f"the {kind} chain: {exc.detail}; {where}") from exc
        try:
            self.registry = setup_registry(self.layout)
        except BaasError as exc:
            self._stop_chain()
            raise OperationFailed(f"deploying the registry: {exc.detail}; {where}") from exc
        try:
            self.vault = setup_vault(self.layout, self.deposits_settings)
        except BaasError as exc:
            self._stop_chain()
            raise OperationFailed(f"deploying the vault: {exc.detail}; {where}") from exc

    def _stop_chain(self) -> int | None:
        process = self._processes.get(CHAIN)
        if process is None:
            return None
        code = stop_process(process)
        self._reap(CHAIN)
        return code

    def start_gateway(self) -> None:
        self._spawn("gateway", "gateway.main", self.layout.gateway_config_path)
        self._wait_ready("gateway", f"{self.layout.gateway_url}/readyz")

    def start(self, ready_timeout_s: float | None = None) -> None:
        """The chain, every node, then the gateway; if one fails, stop what did start."""
        try:
            self.start_chain()
            for node in self.layout.nodes:
                self.start_node(node.name, wait=False)
            for node in self.layout.nodes:
                url = f"http://{node.http_addr}/internal/v1/ready"
                self._wait_ready(node.name, url, ready_timeout_s)
            self.start_gateway()
        except BaseException:
            self.stop()
            raise

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self._processes[name]
        process.send_signal(sig)
        process.wait(timeout=15)
        self._reap(name)

    def pid(self, name: str) -> int:
        return self._processes[name].pid

    def exit_code(self, name: str) -> int | None:
        """The process's exit code (None while it runs)."""
        return self._processes[name].poll()

    def running(self, name: str) -> bool:
        process = self._processes.get(name)
        return process is not None and process.poll() is None

    def _reap(self, name: str) -> None:
        log = self._logs.pop(name, None)
        if log is not None:
            log.close()

    def stop(self, timeout_s: float = 10.0) -> dict[str, int]:
        """Stop everything (gateway first, the chain last); return each process's exit code."""
        codes: dict[str, int] = {}
        order = ["gateway"] + [n.name for n in self.layout.nodes]
        for name in order:
            process = self._processes.get(name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name in order:
            process = self._processes.get(name)
            if process is None:
                continue
            try:
                codes[name] = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
            self._reap(name)
        chain_code = self._stop_chain()
        if chain_code is not None:
            codes[CHAIN] = chain_code
        return codes

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
