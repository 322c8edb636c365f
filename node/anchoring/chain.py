"""The synchronous web3 adapter of anchoring: sign, broadcast and follow anchor transactions.

The anchoring service calls :class:`AnchorChain` from one worker thread (an instance is not
thread-safe; the service owns each nonce behind its lock). Everything web3, eth-tester and
``requests`` raise is translated here, at the border, into the project's errors::

    OperationFailed
    ├── ChainUnavailable     chain_unavailable: no answer (connection refused, timeout, HTTP 5xx)
    └── ChainRejected        the chain refused: a stable ``code`` (below); ``revert`` names the
                             contract's custom error when a call or transaction reverted
    ConfigError
    └── ChainMisconfigured   chain_misconfigured: bad RPC URL, no contract at the address

``ChainRejected.code`` is one of ``chain_reverted``, ``chain_insufficient_funds``,
``chain_fee_too_low``, ``chain_replacement_underpriced``, ``chain_nonce_too_low``,
``chain_nonce_too_high``, ``chain_nonce_invalid`` (eth-tester's wording), ``chain_gas_too_low``,
``chain_rejected`` (anything else).

Broadcasting is idempotent by design: a signed transaction is a fixed byte string (kept in the
replicated anchoring state), so after a crash, a lost answer or a reorg the service simply
broadcasts the same bytes again. :meth:`AnchorChain.broadcast` therefore reads a refusal before
reporting it: if the chain already has the transaction (pool or block) the outcome is
``"known"``; if the sender's nonce was consumed by another transaction it is ``"nonce_used"``
(this one can never be mined; sign a new one). Error messages differ between eth-tester
(``ValidationError: Invalid transaction nonce``), anvil and geth (``nonce too low``), so the
outcome comes from the chain's state, not the wording.

Reverts also differ: eth-tester raises ``TransactionFailed`` whose message holds the revert data
as a Python bytes literal; anvil and our served chain answer JSON-RPC error 3 with hex ``data``
(web3 raises ``ContractCustomError``). :func:`decode_revert` reads both.

:meth:`AnchorChain.inclusion` reports a transaction as mined only while its block is still the
canonical block at that height, so a reorg that drops it (simulated with ``evm_snapshot`` /
``evm_revert``) makes it ``None`` again.

The reads themselves (``anchorOf``, receipts and their ``Anchored`` events, blocks) are
:class:`node.anchoring.registry.RegistryReads`, shared with the verifier's reader; here they run
uncached, inside this module's border.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Literal

import requests
from eth_abi.abi import decode as abi_decode
from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_tester.exceptions import TransactionFailed
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError as EthValidationError
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.types import Wei

from node.anchoring.driver import TxInclusion
from node.anchoring.keyfile import ChainKey
from node.anchoring.registry import AnchorOnChain, RegistryReads, load_artifact
from node.errors import BaasError, ConfigError, InvariantViolation, OperationFailed
from node.merkle.verify import AnchoredEvent

__all__ = [
    "ANCHOR_GAS_LIMIT",
    "EMBEDDED",
    "RPC_TIMEOUT_S",
    "AnchorChain",
    "AnchorOnChain",
    "AnchoredEvent",
    "BroadcastOutcome",
    "ChainMisconfigured",
    "ChainRejected",
    "ChainUnavailable",
    "ErrorTable",
    "Revert",
    "SignedAnchorTx",
    "TxInclusion",
    "balance",
    "border",
    "connect_web3",
    "decode_revert",
    "deploy_registry",
    "error_table",
    "fund",
    "read_chain_id",
    "revert_data",
    "set_submitter",
]

EMBEDDED = "embedded"
"""``rpc_url`` of an in-process eth-tester chain (tests, a single-process demo)."""

RPC_TIMEOUT_S = 10.0
"""Default bound on one JSON-RPC request over HTTP."""

ANCHOR_GAS_LIMIT = 200_000
"""Gas limit of every anchor transaction: one anchor uses ~121k (four new storage slots and the
event), and a fixed limit keeps signing free of an estimate that could itself revert."""

_UINT64_MAX = 2**64 - 1
_TRANSFER_GAS = 21_000  # a plain transfer to an account (no code)

BroadcastOutcome = Literal["sent", "known", "nonce_used"]


class ChainUnavailable(OperationFailed):
    """The chain's JSON-RPC endpoint did not answer (refused, timed out, HTTP 5xx)."""

    code = "chain_unavailable"


@dataclass(frozen=True, slots=True)
class Revert:
    """A decoded revert: the contract's custom error name (``Error``/``Panic`` for the built-in
    ones, ``unknown`` when the selector is not in the ABI) and its arguments."""

    name: str
    args: tuple[Any, ...]


class ChainRejected(OperationFailed):
    """The chain refused a call or transaction; ``code`` says why, ``revert`` names the
    contract error when it reverted."""

    code = "chain_rejected"

    def __init__(self, detail: str, *, code: str | None = None, revert: Revert | None = None):
        super().__init__(detail, code=code)
        self.revert = revert


class ChainMisconfigured(ConfigError):
    """The RPC URL or contract address cannot be what the operator meant."""

    code = "chain_misconfigured"


@dataclass(frozen=True, slots=True)
class SignedAnchorTx:
    """A signed ``anchor(batch_id, tree_size, root)`` transaction, ready to (re)broadcast."""

    raw: bytes
    tx_hash: bytes
    sender: str
    nonce: int
    chain_id: int
    contract: str


# -- errors at the border ----------------------------------------------------------------------

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.HTTPError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    ConnectionError,
    TimeoutError,
)

_LIBRARY: tuple[type[BaseException], ...] = (
    Web3Exception,
    TransactionFailed,
    EthValidationError,
    requests.RequestException,
    ValueError,
)

# (substring of the lower-cased message, code), first match wins.
_REJECTION_CODES: tuple[tuple[str, str], ...] = (
    ("replacement transaction underpriced", "chain_replacement_underpriced"),
    ("insufficient funds", "chain_insufficient_funds"),
    ("cannot afford", "chain_insufficient_funds"),
    ("base fee", "chain_fee_too_low"),
    ("underpriced", "chain_fee_too_low"),
    ("nonce too low", "chain_nonce_too_low"),
    ("nonce too high", "chain_nonce_too_high"),
    ("intrinsic gas", "chain_gas_too_low"),
)

_BUILTIN_ERRORS: dict[bytes, tuple[str, list[str]]] = {
    bytes.fromhex("08c379a0"): ("Error", ["string"]),
    bytes.fromhex("4e487b71"): ("Panic", ["uint256"]),
}


ErrorTable = dict[bytes, tuple[str, list[str]]]
"""4-byte selector -> (custom error name, argument types)."""


def error_table(*abis: list[dict[str, Any]]) -> ErrorTable:
    """The custom errors of ``abis`` (plus ``Error``/``Panic``) by selector, for decode_revert."""
    errors = dict(_BUILTIN_ERRORS)
    for abi in abis:
        for item in abi:
            if item["type"] == "error":
                types = [arg["type"] for arg in item["inputs"]]
                signature = f"{item['name']}({','.join(types)})"
                errors[keccak(text=signature)[:4]] = (item["name"], types)
    return errors


@cache
def _registry_errors() -> ErrorTable:
    return error_table(load_artifact()["abi"])


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert data behind ``exc`` (selector + ABI-encoded arguments), or None."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, ContractLogicError) and isinstance(seen.data, str):
            try:
                return bytes(HexBytes(seen.data))
            except ValueError:
                return None
        if isinstance(seen, TransactionFailed) and seen.args:
            first = seen.args[0]
            if isinstance(first, bytes):
                return first
            if isinstance(first, str):
                # web3's eth-tester provider re-raises "execution reverted: b'...'"
                _, _, literal = first.partition("execution reverted: ")
                if literal.startswith(("b'", 'b"')):
                    try:
                        value = ast.literal_eval(literal)
                    except (ValueError, SyntaxError):
                        value = None
                    if isinstance(value, bytes):
                        return value
        seen = seen.__cause__ or seen.__context__
    return None


def decode_revert(exc: BaseException, errors: ErrorTable | None = None) -> Revert | None:
    """The contract error behind ``exc`` (eth-tester, anvil, geth or our served chain), or None
    when ``exc`` is not a revert with data. ``errors``: the contract's (default: the
    registry's)."""
    data = revert_data(exc)
    if data is None or len(data) < 4:
        return None
    known = (_registry_errors() if errors is None else errors).get(data[:4])
    if known is None:
        return Revert(name="unknown", args=(data.hex(),))
    name, types = known
    try:
        values = abi_decode(types, data[4:])
    except Exception:  # malformed revert payload from the node: keep the name only
        return Revert(name=name, args=())
    args = tuple(
        str(Web3.to_checksum_address(value)) if kind == "address" else value
        for kind, value in zip(types, values, strict=True)
    )
    return Revert(name=name, args=args)


def _rejection(what: str, exc: BaseException, errors: ErrorTable | None = None) -> ChainRejected:
    revert = decode_revert(exc, errors)
    if revert is not None or isinstance(exc, ContractLogicError | TransactionFailed):
        name = revert.name if revert is not None else "without data"
        return ChainRejected(f"{what}: reverted ({name})", code="chain_reverted", revert=revert)
    message = _message_of(exc)
    lowered = message.lower()
    code = next((code for part, code in _REJECTION_CODES if part in lowered), "chain_rejected")
    if code == "chain_rejected" and "invalid transaction nonce" in lowered:
        code = "chain_nonce_invalid"
    return ChainRejected(f"{what}: {message[:300]}", code=code)


def _message_of(exc: BaseException) -> str:
    """The node's own words: a JSON-RPC error's ``message`` rather than the whole response."""
    response = getattr(exc, "rpc_response", None)
    if isinstance(exc, Web3RPCError) and isinstance(response, dict):
        error = response.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(exc)


@contextmanager
def _border(what: str, errors: ErrorTable | None = None) -> Iterator[None]:
    """Translate what web3 and its backends raise into ChainUnavailable / ChainRejected
    (reverts decoded with ``errors``, default the registry's)."""
    try:
        yield
    except BaasError:
        raise
    except _UNAVAILABLE as exc:
        raise ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except _LIBRARY as exc:
        raise _rejection(what, exc, errors) from exc


border = _border
"""The border for another contract's calls: ``with border("withdraw", its_errors): ...``."""


# -- connecting, funding, deploying ------------------------------------------------------------


def connect_web3(rpc_url: str, *, timeout_s: float = RPC_TIMEOUT_S) -> Web3:
    """A Web3 for ``rpc_url``: ``"embedded"`` is a new in-process eth-tester chain (10 funded,
    unlocked accounts); ``http(s)://...`` a JSON-RPC node, each request bounded by
    ``timeout_s`` and not retried (the service decides when to retry)."""
    if rpc_url == EMBEDDED:
        return Web3(EthereumTesterProvider())
    if not rpc_url.startswith(("http://", "https://")):
        raise ChainMisconfigured(f"chain RPC URL {rpc_url!r}: expected http(s)://... or embedded")
    provider = HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
    )
    return Web3(provider)


def read_chain_id(w3: Web3) -> int:
    with _border("eth_chainId"):
        return int(w3.eth.chain_id)


def balance(w3: Web3, address: str) -> int:
    """The balance of ``address`` in wei."""
    target = _cs(_checksum(address))
    with _border("eth_getBalance"):
        return int(w3.eth.get_balance(target))


def fund(w3: Web3, address: str, wei: int) -> None:
    """Send ``wei`` to the account ``address`` from the chain's first unlocked dev account
    (eth-tester, anvil, ``baas-chain serve``) and wait until it is mined."""
    target = _checksum(address)
    with _border("fund"):
        accounts = w3.eth.accounts
        if not accounts:
            raise ChainMisconfigured("the chain has no unlocked dev account to fund from")
        tx_hash = w3.eth.send_transaction(
            {"from": accounts[0], "to": _cs(target), "value": Wei(wei), "gas": _TRANSFER_GAS}
        )
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT_S)
    if receipt["status"] != 1:
        raise ChainRejected(f"funding {target} failed", code="chain_rejected")


def deploy_registry(w3: Web3, deployer: ChainKey | None, submitters: Sequence[str]) -> str:
    """Deploy the AnchorRegistry allowing ``submitters``; returns its checksummed address.

    ``deployer`` signs locally and becomes the owner; None deploys from the chain's first
    unlocked dev account (eth-tester, anvil)."""
    artifact = load_artifact()
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    allowed = [_checksum(address) for address in submitters]
    with _border("deploy"):
        constructor = factory.constructor(allowed)
        if deployer is None:
            tx_hash = constructor.transact({"from": w3.eth.accounts[0]})
        else:
            tx = constructor.build_transaction(
                {
                    "from": deployer.address,
                    "nonce": w3.eth.get_transaction_count(_cs(deployer.address), "pending"),
                    "chainId": w3.eth.chain_id,
                }
            )
            tx_hash = w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT_S)
    address = receipt["contractAddress"]
    if receipt["status"] != 1 or address is None:
        raise ChainRejected("deploying the AnchorRegistry reverted", code="chain_reverted")
    return str(address)


def set_submitter(
    w3: Web3, contract_address: str, owner: ChainKey, submitter: str, allowed: bool
) -> None:
    """As the registry's owner, allow (or stop) ``submitter`` anchoring; waits until mined."""
    contract = w3.eth.contract(address=_cs(_checksum(contract_address)), abi=load_artifact()["abi"])
    with _border("setSubmitter"):
        tx = contract.functions.setSubmitter(_cs(_checksum(submitter)), allowed).build_transaction(
            {
                "from": _cs(owner.address),
                "nonce": w3.eth.get_transaction_count(_cs(owner.address), "pending"),
                "chainId": w3.eth.chain_id,
            }
        )
        tx_hash = w3.eth.send_raw_transaction(owner.sign_transaction(tx).raw)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT_S)
    if receipt["status"] != 1:
        raise ChainRejected("setSubmitter reverted", code="chain_reverted")


def _checksum(address: str) -> str:
    if not Web3.is_address(address):
        raise ChainMisconfigured(f"{address!r} is not an Ethereum address")
    return str(Web3.to_checksum_address(address))


def _sender_and_nonce(raw: bytes) -> tuple[str, int] | None:
    """The signer and nonce of a typed (EIP-2718) transaction; None if it cannot be read."""
    try:
        nonce = int(TypedTransaction.from_bytes(HexBytes(raw)).as_dict()["nonce"])
        sender = str(Account.recover_transaction(raw))
    except Exception:  # not ours to judge here: the chain's own refusal is reported instead
        return None
    return sender, nonce


# -- the registry ------------------------------------------------------------------------------


class AnchorChain:
    """One AnchorRegistry on one chain, seen through ``w3``; ``key`` signs anchors (None for a
    read-only view such as ``baas-verify``)."""

    _gas_limit: ClassVar[int] = ANCHOR_GAS_LIMIT

    def __init__(self, w3: Web3, contract_address: str, key: ChainKey | None = None) -> None:
        self._w3 = w3
        self._key = key
        self.contract_address = _checksum(contract_address)
        # JSON-RPC requests made, by method (``/metrics``: what anchoring costs the chain
        # endpoint and this node; every request of this view goes through ``_rpc``).
        self.rpc_calls: dict[str, int] = {}
        self._reads = RegistryReads(w3, self.contract_address, self._rpc)
        self._contract = self._reads.contract

    def __repr__(self) -> str:
        return f"AnchorChain(contract={self.contract_address}, key={self._key!r})"

    def _rpc(self, method: str) -> AbstractContextManager[None]:
        """The border of one JSON-RPC request, counted under its method name."""
        self.rpc_calls[method] = self.rpc_calls.get(method, 0) + 1
        return _border(method)

    # reads

    def chain_id(self) -> int:
        return self._reads.chain_id()

    def check_contract(self) -> None:
        """ChainMisconfigured unless there is contract code at the address."""
        if not self._reads.has_code():
            raise ChainMisconfigured(
                f"no contract at {self.contract_address} on chain {self.chain_id()}"
            )

    def account_nonce(self) -> int:
        """The key's next nonce, counting transactions still in the pool."""
        key = self._require_key()
        with self._rpc("eth_getTransactionCount"):
            return int(self._w3.eth.get_transaction_count(_cs(key.address), "pending"))

    def head(self) -> int:
        return self._reads.head()

    def head_block(self) -> tuple[int, bytes]:
        """The latest block's (number, hash)."""
        return self._reads.head_block()

    def block_hash(self, number: int) -> bytes | None:
        """The canonical block hash at height ``number``; None above the head."""
        return self._reads.block_hash(number)

    def inclusion(self, tx_hash: bytes) -> TxInclusion | None:
        """Where ``tx_hash`` is mined on the canonical chain; None when it is not (pending,
        unknown, or its block was reorganised away)."""
        receipt = self._reads.receipt(tx_hash)
        if receipt is None:
            return None
        number = int(receipt["blockNumber"])
        block_hash = bytes(receipt["blockHash"])
        if self.block_hash(number) != block_hash:
            return None  # a stale receipt from a block that is no longer canonical
        return TxInclusion(
            block_number=number, block_hash=block_hash, status=int(receipt["status"])
        )

    def anchor_of(self, batch_id: int) -> AnchorOnChain:
        """``anchorOf(batch_id)``: all zero when the batch is not anchored."""
        return self._reads.anchor_of(batch_id)

    def batch_of_root(self, root: bytes) -> int:
        """The batch id that anchored ``root``; 0 when it never was."""
        with self._rpc("eth_call"):
            return int(self._contract.functions.batchOfRoot(root).call())

    def next_batch_id(self) -> int:
        return self._reads.next_batch_id()

    def is_submitter(self, address: str) -> bool:
        with self._rpc("eth_call"):
            return bool(self._contract.functions.submitters(_checksum(address)).call())

    def owner(self) -> str:
        """The registry's owner (its deployer), checksummed."""
        with self._rpc("eth_call"):
            return _checksum(str(self._contract.functions.owner().call()))

    def anchored_in(self, tx_hash: bytes) -> tuple[AnchoredEvent, ...]:
        """The ``Anchored`` events this registry emitted in the mined transaction ``tx_hash``
        (empty when it is not mined or reverted)."""
        receipt = self._reads.receipt(tx_hash)
        return () if receipt is None else self._reads.anchored_events(receipt)

    def simulate_anchor(self, batch_id: int, tree_size: int, root: bytes) -> None:
        """Run ``anchor`` as a call from the key's address: ChainRejected (``chain_reverted``,
        ``revert`` names the rule) if the contract would refuse it now."""
        key = self._require_key()
        _check_anchor_args(batch_id, tree_size, root)
        with self._rpc("eth_call"):
            self._contract.functions.anchor(batch_id, tree_size, root).call(
                {"from": _cs(key.address)}
            )

    # writes

    def sign_anchor(self, batch_id: int, tree_size: int, root: bytes, nonce: int) -> SignedAnchorTx:
        """Sign ``anchor(batch_id, tree_size, root)`` at ``nonce`` with EIP-1559 fees read from
        the chain (max fee twice the latest base fee plus the suggested tip)."""
        key = self._require_key()
        _check_anchor_args(batch_id, tree_size, root)
        if nonce < 0:
            raise InvariantViolation(f"nonce {nonce} is negative")
        with self._rpc("eth_getBlockByNumber"):
            base_fee = int(self._w3.eth.get_block("latest").get("baseFeePerGas") or 0)
        with self._rpc("eth_maxPriorityFeePerGas"):
            tip = int(self._w3.eth.max_priority_fee)
        chain_id = self.chain_id()
        data = self._contract.encode_abi("anchor", args=[batch_id, tree_size, root])
        tx = {
            "type": 2,
            "chainId": chain_id,
            "nonce": nonce,
            "to": self.contract_address,
            "value": 0,
            "gas": self._gas_limit,
            "maxFeePerGas": 2 * base_fee + tip,
            "maxPriorityFeePerGas": tip,
            "data": data,
        }
        signed = key.sign_transaction(tx)
        return SignedAnchorTx(
            raw=signed.raw,
            tx_hash=signed.tx_hash,
            sender=key.address,
            nonce=nonce,
            chain_id=chain_id,
            contract=self.contract_address,
        )

    def broadcast(self, raw: bytes) -> BroadcastOutcome:
        """Send a signed transaction. ``"sent"``: accepted now; ``"known"``: the chain already
        has it (pool or block), so sending again was harmless; ``"nonce_used"``: another
        transaction consumed its nonce and this one will never be mined. Other refusals raise
        ChainRejected; no answer raises ChainUnavailable (broadcast again later)."""
        tx_hash = keccak(raw)
        try:
            with self._rpc("eth_sendRawTransaction"):
                sent = bytes(self._w3.eth.send_raw_transaction(raw))
        except ChainRejected:
            sender_nonce = _sender_and_nonce(raw)
            mined_nonce = None
            if sender_nonce is not None:
                with self._rpc("eth_getTransactionCount"):
                    mined_nonce = int(
                        self._w3.eth.get_transaction_count(_cs(sender_nonce[0]), "latest")
                    )
            # Read the account nonce before looking the transaction up: had ours consumed the
            # nonce in between, the lookup still finds it.
            if self._tx_known(tx_hash):
                return "known"
            if (
                sender_nonce is not None
                and mined_nonce is not None
                and mined_nonce > sender_nonce[1]
            ):
                return "nonce_used"
            raise
        if sent != tx_hash:
            raise InvariantViolation(f"the chain named {sent.hex()} for our tx {tx_hash.hex()}")
        return "sent"

    def _tx_known(self, tx_hash: bytes) -> bool:
        with self._rpc("eth_getTransactionByHash"):
            try:
                self._w3.eth.get_transaction(HexBytes(tx_hash))
            except TransactionNotFound:
                return False
        return True

    def _require_key(self) -> ChainKey:
        if self._key is None:
            raise InvariantViolation("this AnchorChain is read-only (no key)")
        return self._key


def _cs(address: str) -> Any:
    """web3 wants its ChecksumAddress type; ours are checked strings."""
    return Web3.to_checksum_address(address)


def _check_anchor_args(batch_id: int, tree_size: int, root: bytes) -> None:
    if not (0 <= batch_id <= _UINT64_MAX and 0 <= tree_size <= _UINT64_MAX):
        raise InvariantViolation(f"batch id {batch_id} / tree size {tree_size} outside uint64")
    if len(root) != 32:
        raise InvariantViolation(f"a root is 32 bytes, got {len(root)}")
