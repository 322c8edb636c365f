"""Identity files: a restarted node keeps its peer id; bad files are refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from libp2p.peer.id import ID

from node.errors import ConfigError
from node.p2p.identity import (
    generate_identity_seed,
    load_identity,
    load_identity_seed,
    peer_id_of_seed,
    write_identity_file,
)


def test_round_trip_keeps_peer_id(tmp_path: Path) -> None:
    seed = generate_identity_seed()
    path = tmp_path / "sub" / "identity.key"
    write_identity_file(path, seed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity_seed(path) == seed
    key_pair = load_identity(path)
    assert ID.from_pubkey(key_pair.public_key).to_base58() == peer_id_of_seed(seed)
    assert peer_id_of_seed(seed).startswith("12D3KooW")  # Ed25519, identity-hashed
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]  # no temp file left


def test_overwrite_is_atomic_and_seeds_differ(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first, second = generate_identity_seed(), generate_identity_seed()
    assert first != second
    write_identity_file(path, first)
    write_identity_file(path, second)
    assert load_identity_seed(path) == second


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "mode"])
def test_damaged_file_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "identity.key"
    write_identity_file(path, generate_identity_seed())
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(raw[:-1]))
    elif damage == "flip":
        raw[12] ^= 1
        path.write_bytes(bytes(raw))
    elif damage == "magic":
        path.write_bytes(b"BAASID9\n" + bytes(raw[8:]))
    else:
        os.chmod(path, 0o644)
    with pytest.raises(ConfigError):
        load_identity_seed(path)


def test_wrong_seed_size_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_identity_file(tmp_path / "x", b"short")
    with pytest.raises(ConfigError):
        peer_id_of_seed(b"\x00" * 31)
