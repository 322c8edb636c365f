"""``baas-chaos``'s partitions cut real traffic between real processes, both ways, on a connection
already open and for a new one, and healing lets it flow again (iptables on loopback; needs root
and iptables, which ./dev installs). The two processes run with their own gids, as the nodes of
a chaos run do."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tools.chaos_faults import LoopbackPartitioner, PartitionNode, run_tag

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

# Talks on one TCP connection: sends a byte every 0.1 s and prints a line per byte received.
PEER = """
import socket, sys, time
role, port = sys.argv[1], int(sys.argv[2])
if role == "listen":
    server = socket.socket(); server.bind(("127.0.0.1", port)); server.listen()
    print("ready", flush=True); conn, _ = server.accept()
else:
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
conn.settimeout(0.1)
while True:
    try:
        data = conn.recv(100)
        if not data:
            break
        for _ in data:
            print("got", flush=True)
    except socket.timeout:
        pass
    conn.send(b"x")
"""
GIDS = (59_990, 59_991)


class Peer:
    def __init__(self, role: str, port: int, gid: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PEER, role, str(port)],
            stdout=subprocess.PIPE,
            text=True,
            group=gid,
        )
        self.lines: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "got":
                self.lines.append(time.monotonic())

    def got_since(self, since: float) -> int:
        return sum(1 for t in self.lines if t >= since)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def partitioner() -> Iterator[tuple[LoopbackPartitioner, int]]:
    port = _free_port()
    nodes = [
        PartitionNode("a", GIDS[0], (port,)),
        PartitionNode("b", GIDS[1], (_free_port(),)),
    ]
    cutter = LoopbackPartitioner(nodes, run_tag())
    cutter.install()
    try:
        yield cutter, port
    finally:
        assert cutter.remove() == []
    for table in ("filter", "mangle"):
        listed = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        assert cutter.chain not in listed.stdout


def _wait(what: str, check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_partition_cuts_an_open_connection_both_ways_and_a_new_one(
    partitioner: tuple[LoopbackPartitioner, int],
) -> None:
    cutter, port = partitioner
    listener = Peer("listen", port, GIDS[0])
    time.sleep(0.5)
    dialer = Peer("dial", port, GIDS[1])
    try:
        start = time.monotonic()
        _wait("traffic both ways", lambda: listener.got_since(start) and dialer.got_since(start))

        cutter.cut(["a"])
        time.sleep(0.5)  # what was on the wire drains
        quiet_from = time.monotonic()
        time.sleep(2.0)
        assert listener.got_since(quiet_from) == 0 and dialer.got_since(quiet_from) == 0
        with pytest.raises(OSError):  # a new connection is cut at its SYN
            probe = subprocess.run(
                [sys.executable, "-c", PEER, "dial", str(port)],
                group=GIDS[1],
                capture_output=True,
                timeout=10,
            )
            if probe.returncode != 0:
                raise OSError(probe.stderr.decode()[-200:])

        cutter.heal()
        healed = time.monotonic()
        _wait(
            "traffic both ways after the heal",
            lambda: listener.got_since(healed) and dialer.got_since(healed),
            timeout_s=20.0,
        )
    finally:
        for peer in (dialer, listener):
            peer.process.kill()
            peer.process.wait()
