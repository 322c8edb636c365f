"""The chain private key of an anchoring node: loaded from a 0600 file, never shown.

The key signs the node's anchor transactions (``anchor(batchId, treeSize, root)`` on the
AnchorRegistry). Whoever reads it can anchor in our name and spend the account's ETH, so the file
is refused unless only its owner may read it (mode 0600 or stricter), and :class:`ChainKey`
never lets the key out through ``repr``, ``str``, logging or pickling: only its address shows.

File format: one line, the 32-byte secp256k1 private key as 64 hex digits, optionally prefixed
by ``0x``; surrounding whitespace (a trailing newline) is ignored. ``write_key_file`` creates a
new random key with mode 0600 and refuses to overwrite an existing file.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from eth_account import Account
from eth_utils.exceptions import ValidationError as KeyValidationError

from node.errors import ConfigError

__all__ = ["ChainKey", "SignedRawTx", "load_key_file", "write_key_file"]

KEY_FILE_BYTES_MAX = 256
"""A key file is one line of at most 66 characters; anything much longer is not a key file."""

_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True, slots=True)
class SignedRawTx:
    """A signed transaction: the bytes to broadcast and their hash (the transaction id)."""

    raw: bytes
    tx_hash: bytes


class ChainKey:
    """A secp256k1 private key that shows only its address.

    ``address`` is the EIP-55 checksummed account address; ``sign_transaction`` signs a
    transaction dict (web3 field names: ``chainId``, ``nonce``, ``to``, ``gas``,
    ``maxFeePerGas``, ...).
    """

    __slots__ = ("_account", "address")

    _account: Any
    address: str

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32 or not 0 < int.from_bytes(private_key, "big") < _SECP256K1_ORDER:
            raise ConfigError("a chain private key is 32 bytes in 1 .. secp256k1 order - 1")
        try:
            account = Account.from_key(private_key)
        except (KeyValidationError, ValueError):
            raise ConfigError("invalid chain private key") from None
        object.__setattr__(self, "_account", account)
        object.__setattr__(self, "address", str(account.address))

    @classmethod
    def generate(cls) -> ChainKey:
        """A new random key from the operating system's CSPRNG."""
        while True:
            candidate = secrets.token_bytes(32)
            if 0 < int.from_bytes(candidate, "big") < _SECP256K1_ORDER:
                return cls(candidate)

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedRawTx:
        signed = self._account.sign_transaction(dict(tx))
        return SignedRawTx(raw=bytes(signed.raw_transaction), tx_hash=bytes(signed.hash))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("ChainKey is immutable")

    def __repr__(self) -> str:
        return f"ChainKey(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a ChainKey is not pickled: it would write the private key out")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChainKey) and other.address == self.address

    def __hash__(self) -> int:
        return hash(self.address)


def _parse_key_text(path: Path, data: bytes) -> bytes:
    malformed = ConfigError(
        f"chain key file {path}: expected one line with 64 hex digits (optionally 0x-prefixed)"
    )
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise malformed from None
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise malformed
    return bytes.fromhex(text)


def load_key_file(path: str | os.PathLike[str]) -> ChainKey:
    """The key in ``path``; ConfigError if the file is missing, readable by group or others,
    not a regular file, or not one line of 64 hex digits. The message never contains the key."""
    key_path = Path(path)
    try:
        fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"chain key file {key_path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"chain key file {key_path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"chain key file {key_path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"chain key file {key_path} has mode {mode:04o}: group and others must have no "
                "access (chmod 600)"
            )
        data = os.read(fd, KEY_FILE_BYTES_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > KEY_FILE_BYTES_MAX:
        raise ConfigError(f"chain key file {key_path} is longer than {KEY_FILE_BYTES_MAX} bytes")
    private_key = _parse_key_text(key_path, data)
    try:
        return ChainKey(private_key)
    except ConfigError:
        raise ConfigError(f"chain key file {key_path}: not a valid secp256k1 key") from None


def write_key_file(path: str | os.PathLike[str]) -> ChainKey:
    """Create ``path`` (mode 0600, must not exist) holding a new random key; returns the key."""
    key_path = Path(path)
    key = ChainKey.generate()
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(f"chain key file {key_path} already exists; not overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot create chain key file {key_path}: {exc.strerror}") from None
    try:
        os.write(fd, ("0x" + bytes(key._account.key).hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
