"""Test chains: a real anvil process on loopback and an in-process eth-tester, with the registry.

Plain helpers (no pytest needed) plus fixtures ``anvil`` and ``chain`` that other test files
import (``from chains import anvil_fixture, chain_fixture  # noqa: F401``):

* :func:`running_anvil` (:mod:`tools.local_chain`, shared with the benchmarks) starts
  ``anvil --host 127.0.0.1 --port P --chain-id 31337 --silent``
  (``--block-time S`` for interval mining) on a free port and waits until it answers JSON-RPC.
  The binary comes from ``contracts/node_modules`` (``./dev setup`` installs it with ``npm ci``);
  ``BAAS_ANVIL`` overrides the path (``tools.local_chain.anvil_path``, shared with the local
  cluster's chain, as are ``wait_until_answering`` and ``stop_process``).
* ``ANVIL_DEV_KEYS``: the funded accounts of anvil's default mnemonic ("test test ... junk").
* :func:`embedded_chain_web3`: a fresh in-process eth-tester chain.
* :class:`TestChain`: either chain with a deployed registry, a funded submitter key and the
  :class:`AnchorChain` for it; fixture ``chain`` is parametrized over both.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from web3 import Web3

from node.anchoring.chain import (
    AnchorChain,
    TxInclusion,
    connect_web3,
    deploy_registry,
    fund,
)
from node.anchoring.keyfile import ChainKey
from tools.local_chain import (
    Anvil,
    anvil_path,
    free_port,
    running_anvil,
    stop_process,
    wait_until_answering,
)

__all__ = [  # re-exported for the tests
    "Anvil",
    "anvil_path",
    "free_port",
    "running_anvil",
    "stop_process",
    "wait_until_answering",
]

REPO = Path(__file__).resolve().parent.parent

ANVIL_DEV_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
)
"""Private keys of anvil's dev accounts 0..3 (public test keys; never use them elsewhere)."""

FUND_WEI = 10**20  # 100 ETH: thousands of anchors


def rpc(
    url: str, method: str, params: list[object] | None = None, timeout_s: float = 2.0
) -> object:
    """One raw JSON-RPC call; returns ``result`` or raises RuntimeError with the error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def embedded_chain_web3() -> Web3:
    """A fresh in-process eth-tester chain (10 funded, unlocked accounts)."""
    return connect_web3("embedded")


@dataclass(frozen=True)
class TestChain:
    """A chain with a registry: ``owner`` deployed it, ``key`` is an allowed, funded submitter
    and ``anchors`` signs with it."""

    __test__ = False  # not a pytest test class

    kind: str
    w3: Web3
    contract: str
    owner: ChainKey
    key: ChainKey
    anchors: AnchorChain
    url: str | None


def prepare_chain(kind: str, w3: Web3, url: str | None = None) -> TestChain:
    """Deploy the registry on ``w3`` with a funded owner and a new funded submitter key."""
    owner = (
        ChainKey(bytes.fromhex(ANVIL_DEV_KEYS[0][2:])) if kind == "anvil" else ChainKey.generate()
    )
    key = ChainKey.generate()
    if kind != "anvil":
        fund(w3, owner.address, FUND_WEI)
    fund(w3, key.address, FUND_WEI)
    contract = deploy_registry(w3, owner, [key.address])
    return TestChain(kind, w3, contract, owner, key, AnchorChain(w3, contract, key), url)


@pytest.fixture(name="anvil")
def anvil_fixture() -> Iterator[Anvil]:
    with running_anvil() as node:
        yield node


@pytest.fixture(name="chain", params=["eth-tester", "anvil"])
def chain_fixture(request: pytest.FixtureRequest) -> Iterator[TestChain]:
    """The registry on eth-tester (in process) and on a real anvil."""
    if request.param == "eth-tester":
        yield prepare_chain("eth-tester", embedded_chain_web3())
        return
    with running_anvil() as node:
        yield prepare_chain("anvil", connect_web3(node.url), node.url)


def mined(anchors: AnchorChain, tx_hash: bytes, timeout_s: float = 10.0) -> TxInclusion:
    """The transaction's inclusion, once mined: a loaded anvil may answer a send before it
    has mined the block (automine), so a test waits rather than reads once."""
    deadline = time.monotonic() + timeout_s
    while True:
        inclusion = anchors.inclusion(tx_hash)
        if inclusion is not None:
            return inclusion
        if time.monotonic() > deadline:
            raise AssertionError(f"transaction 0x{tx_hash.hex()} not mined in {timeout_s} s")
        time.sleep(0.02)
