"""etcd as the peer of ``baas-bench --peer etcd``: a 5-member cluster on loopback and its load.

The issue's yardstick for committed writes is etcd on the same box in the same run: Debian's
``etcd-server`` (3.4), five members on 127.0.0.1, each with its own data directory under the
run's temporary directory and fsync on (etcd's default; ``--unsafe-no-fsync`` is never passed),
driven through etcd's JSON gateway (``POST /v3/kv/put``, ``/v3/kv/txn``, ``/v3/kv/range``,
base64 keys and values) by the same aiohttp closed and open loops that drive our gateway
(:mod:`tools.bench_load`):

* ``single-write``: one put per request, clients spread round-robin over the five members
  (a member that does not lead forwards the proposal to the leader, as our gateway does);
* ``batch-write``: one txn of ``batch_size`` puts per request (no compares: always applied);
* ``read``: serializable ranges of one key written earlier (served by the member asked,
  without a round to the leader -- ours rebuild each record from k shards and decrypt);
* ``paced-write``: single puts in an open loop, latency from the scheduled send time.

:func:`ensure_etcd` finds the binary, or installs ``etcd-server`` with apt when running as root
(and stops the packaged service if it started); otherwise it fails with one line saying how.
:class:`EtcdCluster` starts, waits for and stops the members and removes their data, also on
Ctrl-C or failure.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from node.errors import ConfigError, OperationFailed
from tools.bench_load import (
    BODY_POOL_MAX,
    PACED_INFLIGHT_MAX,
    TRANSPORT_ERRORS,
    Recorder,
    WorkerSpec,
    batch_sizes,
    closed_loop,
    run_paced,
)

__all__ = [
    "ETCD_PHASES",
    "EtcdCluster",
    "ensure_etcd",
    "etcd_key",
    "etcd_version",
    "run_etcd_phase",
]

ETCD_PHASES = ("single-write", "batch-write", "read", "paced-write")
ETCD_PACKAGE = "etcd-server"
MEMBERS = 5
HEALTH_TIMEOUT_S = 60.0
HEALTH_POLL_S = 0.2
STOP_TIMEOUT_S = 10.0
APT_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 30.0  # one put, txn or range; past it the request counts as an error
INSTALL_HINT = (
    "etcd is not installed: run `sudo apt-get install etcd-server` (Debian/Ubuntu; then "
    "`sudo systemctl disable --now etcd`), or put an etcd 3.4+ binary on PATH"
)


# ---------------------------------------------------------------- the binary


def _run_quiet(argv: list[str], timeout_s: float) -> int:
    done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    return done.returncode


def ensure_etcd() -> str:
    """The path of the ``etcd`` binary; installs Debian's ``etcd-server`` when root and missing."""
    found = shutil.which("etcd")
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ConfigError(INSTALL_HINT)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", ETCD_PACKAGE]):
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=APT_TIMEOUT_S, env=env, check=False
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise ConfigError(f"`{' '.join(argv)}` failed ({tail[0]}); {INSTALL_HINT}")
    if shutil.which("systemctl") is not None:
        # the package enables a member on the default ports; the bench's members need no
        # such neighbour (where no init system runs, policy-rc.d already kept it from starting)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run_quiet(["systemctl", "disable", "--now", "etcd"], 60.0)
    found = shutil.which("etcd")
    if found is None:
        raise ConfigError(f"{ETCD_PACKAGE} installed but no etcd on PATH; {INSTALL_HINT}")
    return found


def etcd_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    first = done.stdout.strip().splitlines()[:1] or ["unknown"]
    return first[0].removeprefix("etcd Version:").strip()


# ---------------------------------------------------------------- the cluster


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (all held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]


class EtcdCluster:
    """``members`` etcd processes on loopback, each with its own data dir (fsync on)."""

    def __init__(self, binary: str, members: int = MEMBERS, *, keep: bool = False) -> None:
        if members < 1:
            raise ConfigError("an etcd cluster needs at least one member")
        self.binary = binary
        self.names = [f"etcd-{i + 1}" for i in range(members)]
        self.keep = keep
        self.directory = Path(tempfile.mkdtemp(prefix="baas-bench-etcd-"))
        ports = _free_ports(2 * members)
        self.client_ports = ports[:members]
        self.peer_ports = ports[members:]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def client_urls(self) -> tuple[str, ...]:
        return tuple(f"http://127.0.0.1:{port}" for port in self.client_ports)

    def _argv(self, index: int, token: str) -> list[str]:
        name = self.names[index]
        peer = f"http://127.0.0.1:{self.peer_ports[index]}"
        client = self.client_urls[index]
        initial = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        return [
            self.binary,
            "--name", name,
            "--data-dir", str(self.directory / name),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self) -> None:
        token = f"baas-bench-{os.getpid()}-{random.SystemRandom().getrandbits(32):08x}"
        for index, name in enumerate(self.names):
            log = (self.directory / f"{name}.log").open("wb")
            with log:  # the child keeps its own descriptor
                self.processes[name] = subprocess.Popen(
                    self._argv(index, token),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C reaches the bench, which stops them
                )
        self.wait_healthy(HEALTH_TIMEOUT_S)

    def _healthy(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2.0) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds until every member says it is healthy (it has a leader and can commit)."""
        started = time.monotonic()
        while True:
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                raise OperationFailed(f"etcd member {dead[0]} exited: {self.log_tail(dead[0])}")
            if all(self._healthy(url) for url in self.client_urls):
                return round(time.monotonic() - started, 3)
            if time.monotonic() - started > timeout_s:
                raise OperationFailed(f"the etcd members were not healthy within {timeout_s:g} s")
            time.sleep(HEALTH_POLL_S)

    def log_tail(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return lines[-1] if lines else "(no log)"

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.processes.items()}

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- the load


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def etcd_key(seed: int, index: int) -> str:
    return f"bench/{seed}/{index:09d}"


def _values(spec: WorkerSpec) -> list[str]:
    rng = random.Random(spec.seed)  # incompressible, like our encrypted shards
    return [_b64(rng.randbytes(spec.value_bytes)) for _ in range(BODY_POOL_MAX)]


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any] | None]:
    async with session.post(url, json=body) as response:
        reply = await response.json(content_type=None) if response.status == 200 else None
        return response.status, reply if isinstance(reply, dict) else None


async def _send(
    rec: Recorder,
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    keys: list[str],
    started: float,
) -> None:
    """One put, txn or range; ``keys`` are kept as written ids (none for a range)."""
    try:
        status, reply = await _post(session, url, body)
    except TRANSPORT_ERRORS as exc:
        rec.result.errors[type(exc).__name__] += max(1, len(keys))
        rec.done(started, 0, max(1, len(keys)))
        return
    error = _reply_error(url, status, reply)
    if error is not None:
        rec.result.errors[error] += max(1, len(keys))
        rec.done(started, 0, max(1, len(keys)))
        return
    for key in keys:
        rec.keep_id(key)
    rec.done(started, max(1, len(keys)), max(1, len(keys)))


def _reply_error(url: str, status: int, reply: dict[str, Any] | None) -> str | None:
    if status != 200 or reply is None:
        return f"http_{status}"
    if url.endswith("/txn") and reply.get("succeeded") is not True:
        return "txn_not_succeeded"
    if url.endswith("/range") and int(reply.get("count", 0)) != 1:
        return "key_not_found"
    return None


async def _single(spec: WorkerSpec, session: aiohttp.ClientSession, rec: Recorder) -> None:
    values = _values(spec)
    urls = spec.etcd_urls

    async def send(index: int) -> None:
        key = etcd_key(spec.seed, index)
        body = {"key": _b64(key.encode()), "value": values[index % len(values)]}
        url = f"{urls[index % len(urls)]}/v3/kv/put"
        await _send(rec, session, url, body, [key], time.perf_counter())

    await closed_loop(spec, send, spec.concurrency, spec.requests)


async def _batch(spec: WorkerSpec, session: aiohttp.ClientSession, rec: Recorder) -> None:
    values = _values(spec)
    urls = spec.etcd_urls
    sizes = batch_sizes(spec.requests, spec.batch_size)  # requests = puts here

    async def send(index: int) -> None:
        first = index * spec.batch_size
        keys = [etcd_key(spec.seed, first + j) for j in range(sizes[index])]
        puts = [
            {"requestPut": {"key": _b64(key.encode()), "value": values[(first + j) % len(values)]}}
            for j, key in enumerate(keys)
        ]
        url = f"{urls[index % len(urls)]}/v3/kv/txn"
        await _send(rec, session, url, {"success": puts}, keys, time.perf_counter())

    await closed_loop(spec, send, spec.concurrency, len(sizes))


async def _read(spec: WorkerSpec, session: aiohttp.ClientSession, rec: Recorder) -> None:
    keys = spec.record_ids
    if not keys:
        raise ValueError("the read phase needs keys written earlier")
    urls = spec.etcd_urls

    async def send(index: int) -> None:
        body = {"key": _b64(keys[index % len(keys)].encode()), "serializable": True}
        url = f"{urls[index % len(urls)]}/v3/kv/range"
        await _send(rec, session, url, body, [], time.perf_counter())

    await closed_loop(spec, send, spec.concurrency, spec.requests)


async def _paced(spec: WorkerSpec, session: aiohttp.ClientSession, rec: Recorder) -> None:
    values = _values(spec)
    urls = spec.etcd_urls

    async def send_one(index: int, due: float) -> None:
        key = etcd_key(spec.seed, spec.proc_index + index * spec.procs)
        body = {"key": _b64(key.encode()), "value": values[index % len(values)]}
        await _send(rec, session, f"{urls[index % len(urls)]}/v3/kv/put", body, [key], due)

    await run_paced(spec, rec, send_one)


_RUNNERS = {"single-write": _single, "batch-write": _batch, "read": _read, "paced-write": _paced}


async def run_etcd_phase(spec: WorkerSpec, rec: Recorder) -> None:
    """This process's share of ``spec.phase`` against the etcd members in ``spec.etcd_urls``."""
    if spec.phase not in _RUNNERS:
        raise ConfigError(f"etcd runs {', '.join(ETCD_PHASES)}; not {spec.phase!r}")
    connections = max(spec.concurrency, PACED_INFLIGHT_MAX if spec.rate_per_s else 1)
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _RUNNERS[spec.phase](spec, session, rec)
