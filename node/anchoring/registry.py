"""The AnchorRegistry contract artifact (ABI + bytecode) and the reads of it over web3.

The artifact is compiled from ``contracts/AnchorRegistry.sol`` by ``contracts/compile.mjs``
(pinned npm ``solc``, evmVersion ``cancun``) and committed, so running needs no compiler; CI
recompiles and byte-compares it.

:class:`RegistryReads` is the one place that reads the contract and the chain around it: the
chain id, ``anchorOf``/``nextBatchId``, a mined transaction's receipt and the ``Anchored``
events *this* contract emitted in it (a look-alike event from another contract in the same
transaction does not count), the head and canonical block hashes. It caches nothing but the
chain id and leaves error policy to its owner: every RPC runs inside the owner's ``border``.
Two owners wrap it:

* :class:`node.anchoring.chain.AnchorChain`, the node's adapter, reads through it uncached (the
  node must see a reorg) and reports failures as ``ChainUnavailable``/``ChainRejected``;
* :class:`RegistryReader`, the read side a verifier needs (:class:`node.merkle.verify.ChainReader`
  over web3), caches what one verification run asks again and again (found anchors, mined
  transactions, block hashes; ``nextBatchId`` until the head moves), so a thousand receipts
  over a few anchors cost a few cheap RPC calls each, not dozens. Every web3 or connection
  error leaves it as :class:`~node.errors.OperationFailed` with code ``chain_unavailable`` and
  one short line for the user; an address without code is :class:`~node.errors.NotFound`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import requests
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import BlockNotFound, TransactionNotFound, Web3Exception
from web3.types import TxReceipt

from node.errors import InvalidRequest, NotFound, OperationFailed
from node.merkle.verify import AnchoredEvent, MinedAnchorTx, OnChainAnchor

__all__ = [
    "ANCHORED_TOPIC",
    "ARTIFACT_NAME",
    "AnchorOnChain",
    "Border",
    "RegistryReader",
    "RegistryReads",
    "load_artifact",
]

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

Border = Callable[[str], AbstractContextManager[None]]
"""``border(rpc_name)``: a context that translates what web3 raises into the owner's errors."""


class AnchorOnChain(NamedTuple):
    """``anchorOf(batchId)`` as the contract answers it: all zero when the batch is not
    anchored."""

    tree_size: int
    root: bytes
    block_number: int


class RegistryReads:
    """The reads of one AnchorRegistry at ``address`` through ``w3``; each RPC inside
    ``border``. Not cached (but for the chain id, which an endpoint never changes)."""

    def __init__(self, w3: Web3, address: str, border: Border) -> None:
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=load_artifact()["abi"])
        self._border = border
        self._chain_id: int | None = None

    def chain_id(self) -> int:
        if self._chain_id is None:
            with self._border("eth_chainId"):
                self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def has_code(self) -> bool:
        with self._border("eth_getCode"):
            return len(self.w3.eth.get_code(self.address)) > 0

    def head(self) -> int:
        with self._border("eth_blockNumber"):
            return int(self.w3.eth.block_number)

    def head_block(self) -> tuple[int, bytes]:
        """The latest block's number and hash, in one request: the hash names the whole
        canonical chain below it (each block commits to its parent)."""
        with self._border("eth_getBlockByNumber"):
            block = self.w3.eth.get_block("latest")
        return int(block["number"]), bytes(block["hash"])

    def block_hash(self, number: int) -> bytes | None:
        """The canonical block hash at height ``number``; None above the head."""
        with self._border("eth_getBlockByNumber"):
            try:
                block = self.w3.eth.get_block(number)
            except BlockNotFound:
                return None
        block_hash = block.get("hash")
        return None if block_hash is None else bytes(block_hash)

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        """The receipt of ``tx_hash`` once mined (in whatever block the node last saw it);
        None while it is unknown or pending."""
        with self._border("eth_getTransactionReceipt"):
            try:
                receipt = self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None
        return None if receipt.get("blockNumber") is None else receipt

    def anchored_events(self, receipt: TxReceipt) -> tuple[AnchoredEvent, ...]:
        """The ``Anchored`` events this contract emitted in ``receipt``, in log order."""
        with self._border("eth_getTransactionReceipt"):
            return tuple(self._anchored(receipt["logs"]))

    def _anchored(self, logs: Any) -> Iterator[AnchoredEvent]:
        event = self.contract.events.Anchored()
        for log in logs:
            if Web3.to_checksum_address(str(log["address"])) != self.address:
                continue
            topics = log["topics"]
            if not topics or bytes(topics[0]) != ANCHORED_TOPIC:
                continue
            args = event.process_log(log)["args"]
            yield AnchoredEvent(int(args["batchId"]), bytes(args["root"]), int(args["treeSize"]))

    def anchor_of(self, batch_id: int) -> AnchorOnChain:
        with self._border("anchorOf"):
            tree_size, root, block_number = self.contract.functions.anchorOf(batch_id).call()
        return AnchorOnChain(int(tree_size), bytes(root), int(block_number))

    def next_batch_id(self) -> int:
        with self._border("nextBatchId"):
            return int(self.contract.functions.nextBatchId().call())


# -- the verifier's reader -----------------------------------------------------------------


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
    """Reads one AnchorRegistry contract at ``address`` through ``w3`` (a ChainReader), with
    the per-run caches of a verifier."""

    def __init__(self, w3: Web3, address: str) -> None:
        if not Web3.is_address(address):
            raise InvalidRequest(f"{address!r} is not an Ethereum address")
        self._reads = RegistryReads(w3, address, _chain_errors)
        self._has_code = False
        self._anchors: dict[int, OnChainAnchor] = {}
        self._transactions: dict[bytes, MinedAnchorTx] = {}
        self._block_hashes: dict[int, bytes] = {}
        self._next_batch: tuple[int, int] | None = None  # (head it was read at, value)

    @property
    def contract(self) -> str:
        return self._reads.address

    def chain_id(self) -> int:
        return self._reads.chain_id()

    def _require_code(self) -> None:
        """NotFound unless there is a contract at the address; asked before its first call."""
        if self._has_code:
            return
        if not self._reads.has_code():
            raise NotFound(
                f"there is no contract at {self.contract} on chain {self.chain_id()}",
                code="contract_not_found",
            )
        self._has_code = True

    def anchor_of(self, batch_id: int) -> OnChainAnchor | None:
        found = self._anchors.get(batch_id)
        if found is not None:
            return found
        self._require_code()
        tree_size, root, block_number = self._reads.anchor_of(batch_id)
        if root == _ZERO_ROOT:
            return None  # not (yet) anchored: ask again next time
        found = OnChainAnchor(tree_size, root, block_number)
        self._anchors[batch_id] = found
        return found

    def next_batch_id(self) -> int:
        # An eth_call costs milliseconds, eth_blockNumber far less: ask again only in a new block.
        head = self.head()
        if self._next_batch is None or self._next_batch[0] != head:
            self._require_code()
            self._next_batch = (head, self._reads.next_batch_id())
        return self._next_batch[1]

    def tx_inclusion(self, tx_hash: bytes) -> MinedAnchorTx | None:
        found = self._transactions.get(tx_hash)
        if found is not None:
            return found
        receipt = self._reads.receipt(tx_hash)
        if receipt is None:
            return None
        found = MinedAnchorTx(
            block_number=int(receipt["blockNumber"]),
            block_hash=bytes(receipt["blockHash"]),
            status=int(receipt["status"]),
            events=self._reads.anchored_events(receipt),
        )
        self._transactions[tx_hash] = found
        return found

    def head(self) -> int:
        return self._reads.head()

    def block_hash(self, number: int) -> bytes | None:
        found = self._block_hashes.get(number)
        if found is None:
            found = self._reads.block_hash(number)
            if found is not None:
                self._block_hashes[number] = found
        return found
