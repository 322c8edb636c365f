"""The AnchorRegistry contract artifact (ABI + bytecode) and its binding to a web3 connection.

The artifact is compiled from ``contracts/AnchorRegistry.sol`` by ``contracts/compile.mjs``
(pinned npm ``solc``, evmVersion ``cancun``) and committed, so running needs no compiler; CI
recompiles and byte-compares it.

:class:`RegistryReader` is the read side a verifier needs (:class:`node.merkle.verify.ChainReader`
over web3): the chain id, ``anchorOf``/``nextBatchId``, a transaction's receipt with the
``Anchored`` events *this* contract emitted in it (a look-alike event from another contract in
the same transaction does not count), the head and canonical block hashes. It caches what one
verification run asks again and again (the chain id, found anchors, mined transactions, block
hashes; ``nextBatchId`` until the head moves), so a thousand receipts over a few anchors cost
a few cheap RPC calls each, not dozens.
Every web3 or connection error leaves as :class:`~node.errors.OperationFailed` with code
``chain_unavailable``; an address without code is :class:`~node.errors.NotFound`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import requests
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import BlockNotFound, TransactionNotFound, Web3Exception

from node.errors import InvalidRequest, NotFound, OperationFailed
from node.merkle.verify import AnchoredEvent, OnChainAnchor, TxInclusion

__all__ = ["ANCHORED_TOPIC", "ARTIFACT_NAME", "RegistryReader", "load_artifact"]

_T = TypeVar("_T")

ARTIFACT_NAME = "AnchorRegistry.json"


@cache
def load_artifact() -> dict[str, Any]:
    """The committed artifact: ``abi``, ``bytecode``, ``deployedBytecode``, compiler settings."""
    text = resources.files("node.anchoring").joinpath("artifacts", ARTIFACT_NAME).read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact


ANCHORED_TOPIC = bytes(Web3.keccak(text="Anchored(uint64,bytes32,uint64)"))
_ZERO_ROOT = bytes(32)
_REASON_CHARS_MAX = 200


@contextmanager
def _chain_errors(what: str) -> Iterator[None]:
    """web3, HTTP and socket errors -> OperationFailed(chain_unavailable)."""
    try:
        yield
    except (Web3Exception, OSError, ValueError) as exc:  # requests' errors are OSErrors
        raise OperationFailed(
            f"chain unavailable ({what}): {_reason(exc)}", code="chain_unavailable"
        ) from exc


def _reason(exc: BaseException) -> str:
    """One short line for a user, not urllib3's nested retry report."""
    if isinstance(exc, requests.exceptions.Timeout):
        return "the RPC endpoint did not answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "cannot connect to the RPC endpoint"
    text = " ".join(str(exc).split())
    return text if len(text) <= _REASON_CHARS_MAX else text[: _REASON_CHARS_MAX - 3] + "..."


class RegistryReader:
    """Reads one AnchorRegistry contract at ``address`` through ``w3`` (a ChainReader)."""

    def __init__(self, w3: Web3, address: str) -> None:
        if not Web3.is_address(address):
            raise InvalidRequest(f"{address!r} is not an Ethereum address")
        self._w3 = w3
        self._address = Web3.to_checksum_address(address)
        self._contract = w3.eth.contract(address=self._address, abi=load_artifact()["abi"])
        self._chain_id: int | None = None
        self._has_code = False
        self._anchors: dict[int, OnChainAnchor] = {}
        self._transactions: dict[bytes, TxInclusion] = {}
        self._block_hashes: dict[int, bytes] = {}
        self._next_batch: tuple[int, int] | None = None  # (head it was read at, value)

    @property
    def contract(self) -> str:
        return self._address

    def chain_id(self) -> int:
        if self._chain_id is None:
            with _chain_errors("eth_chainId"):
                self._chain_id = int(self._w3.eth.chain_id)
        return self._chain_id

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        if not self._has_code:
            with _chain_errors("eth_getCode"):
                code = self._w3.eth.get_code(self._address)
            if not code:
                raise NotFound(
                    f"there is no contract at {self._address} on chain {self.chain_id()}",
                    code="contract_not_found",
                )
            self._has_code = True
        with _chain_errors(what):
            return call()

    def anchor_of(self, batch_id: int) -> OnChainAnchor | None:
        found = self._anchors.get(batch_id)
        if found is not None:
            return found
        tree_size, root, block_number = self._call(
            "anchorOf", self._contract.functions.anchorOf(batch_id).call
        )
        if bytes(root) == _ZERO_ROOT:
            return None  # not (yet) anchored: ask again next time
        found = OnChainAnchor(int(tree_size), bytes(root), int(block_number))
        self._anchors[batch_id] = found
        return found

    def next_batch_id(self) -> int:
        # An eth_call costs milliseconds, eth_blockNumber far less: ask again only in a new block.
        head = self.head()
        if self._next_batch is None or self._next_batch[0] != head:
            call = self._contract.functions.nextBatchId().call
            self._next_batch = (head, int(self._call("nextBatchId", call)))
        return self._next_batch[1]

    def tx_inclusion(self, tx_hash: bytes) -> TxInclusion | None:
        found = self._transactions.get(tx_hash)
        if found is not None:
            return found
        with _chain_errors("eth_getTransactionReceipt"):
            try:
                receipt = self._w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None
            found = TxInclusion(
                block_number=int(receipt["blockNumber"]),
                block_hash=bytes(receipt["blockHash"]),
                status=int(receipt["status"]),
                events=tuple(self._anchored_events(receipt["logs"])),
            )
        self._transactions[tx_hash] = found
        return found

    def _anchored_events(self, logs: Any) -> Iterator[AnchoredEvent]:
        event = self._contract.events.Anchored()
        for log in logs:
            if log["address"] != self._address:
                continue
            topics = log["topics"]
            if not topics or bytes(topics[0]) != ANCHORED_TOPIC:
                continue
            args = event.process_log(log)["args"]
            yield AnchoredEvent(int(args["batchId"]), bytes(args["root"]), int(args["treeSize"]))

    def head(self) -> int:
        with _chain_errors("eth_blockNumber"):
            return int(self._w3.eth.block_number)

    def block_hash(self, number: int) -> bytes | None:
        found = self._block_hashes.get(number)
        if found is not None:
            return found
        with _chain_errors("eth_getBlockByNumber"):
            try:
                block = self._w3.eth.get_block(number)
            except BlockNotFound:
                return None
        found = bytes(block["hash"])
        self._block_hashes[number] = found
        return found
