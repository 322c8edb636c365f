"""The EIP-712 messages: the core's fixed-type hashing agrees with eth-account, and only the
exact signed fields, chain id and mode recover the signer."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st
from identitykit import CHAIN_ID, address, sign, user

from business.identity import eip712

ALICE, BOB = user("alice"), user("bob")
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


_u64 = st.integers(0, (1 << 64) - 1)
_mode = st.integers(0, 1)
messages = st.one_of(
    st.builds(eip712.Link, _b(16), _mode, _b(32), _b(20), _u64, _b(32)),
    st.builds(eip712.Unlink, _b(16), _mode, _b(32), _b(20), _u64, _b(32)),
    st.builds(eip712.Approve, _mode, _b(32), _b(20), _u64),
    st.builds(
        eip712.CodeIssue,
        _mode,
        _b(32),
        st.integers(1, (1 << 32) - 1),
        st.integers(1, (1 << 128) - 1),
        _u64,
        _b(20),
    ),
)


@settings(max_examples=40, deadline=None)
@given(messages, st.integers(1, 1 << 40))
def test_fast_hashing_matches_eth_account_and_recovers_the_signer(
    message: Any, chain_id: int
) -> None:
    signable = encode_typed_data(full_message=eip712.typed_data(message, chain_id))
    signed = ALICE.sign_message(signable)
    assert signed.message_hash == message.digest(chain_id)
    assert Account.recover_message(signable, signature=signed.signature) == ALICE.address
    assert eip712.recover_signer(message, chain_id, bytes(signed.signature)) == address(ALICE)


def _link(**changes: Any) -> eip712.Link:
    fields: dict[str, Any] = {
        "partner": b"\x01" * 16,
        "mode": 0,
        "user_ref": b"\x02" * 32,
        "wallet": address(ALICE),
        "deadline": 1_800_000_600,
        "nonce": b"\x03" * 32,
    }
    return eip712.Link(**{**fields, **changes})


@pytest.mark.parametrize(
    "other",
    [
        _link(partner=b"\x09" * 16),
        _link(mode=1),
        _link(user_ref=b"\x09" * 32),
        _link(deadline=1_800_000_601),
        _link(nonce=b"\x09" * 32),
        eip712.Unlink(**{f.name: getattr(_link(), f.name) for f in dataclasses.fields(_link())}),
    ],
)
def test_a_signature_over_other_fields_or_another_type_recovers_someone_else(
    other: eip712.Link,
) -> None:
    signature = sign(ALICE, _link())
    assert eip712.recover_signer(_link(), CHAIN_ID, signature) == address(ALICE)
    assert eip712.recover_signer(other, CHAIN_ID, signature) not in (None, address(ALICE))


def test_another_chain_id_recovers_someone_else() -> None:
    signature = sign(ALICE, _link(), chain_id=1)
    assert eip712.recover_signer(_link(), CHAIN_ID, signature) != address(ALICE)
    assert eip712.recover_signer(_link(), 1, signature) == address(ALICE)


def test_malformed_and_malleable_signatures_are_refused() -> None:
    good = sign(ALICE, _link())
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    high_s = r + (N - s).to_bytes(32, "big") + bytes((55 - v,))  # the same point, other s
    assert eip712.recover_signer(_link(), CHAIN_ID, high_s) is None
    assert eip712.recover_signer(_link(), CHAIN_ID, good[:64] + bytes((v - 27,))) == address(
        ALICE
    )  # v as 0/1 is the same signature
    for bad in (b"", good[:64], good + b"\x00", good[:64] + b"\x05", bytes(65), b"\xff" * 65):
        assert eip712.recover_signer(_link(), CHAIN_ID, bad) is None


def test_two_users_never_recover_as_each_other() -> None:
    message = _link(wallet=address(BOB))
    assert eip712.recover_signer(message, CHAIN_ID, sign(ALICE, message)) == address(ALICE)
    assert eip712.recover_signer(message, CHAIN_ID, sign(BOB, message)) == address(BOB)


def test_the_pure_python_backend_recovers_the_same_signer() -> None:
    """Replicas with and without coincurve must reach the same verdict."""
    from eth_keys.backends.native.main import NativeECCBackend
    from eth_keys.datatypes import Signature

    for i in range(3):
        message = _link(nonce=bytes((i,)) * 32)
        signature = sign(user(f"u{i}"), message)
        sig = Signature(signature[:64] + bytes((signature[64] - 27,)), backend=NativeECCBackend())
        native = sig.recover_public_key_from_msg_hash(message.digest(CHAIN_ID))
        assert native.to_canonical_address() == eip712.recover_signer(message, CHAIN_ID, signature)
        assert native.to_canonical_address() == address(user(f"u{i}"))
