"""node/chain/vault.py without a chain: its EIP-712 hashing against eth-account's generic
``encode_typed_data`` for random withdrawals (hypothesis), and its input checks.

The same digests against the deployed contract's own: tests/test_vault_contract.py.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from node.chain.vault import VaultDomain, Withdrawal, recover, sign_digest, typed_data

addresses = st.binary(min_size=20, max_size=20)
withdrawals = st.builds(
    Withdrawal,
    id=st.binary(min_size=32, max_size=32),
    token=addresses,
    amount=st.integers(1, 2**256 - 1),
    user=addresses,
    to=addresses,
    wallet=st.binary(min_size=16, max_size=16),
    deadline=st.integers(0, 2**64 - 1),
)
domains = st.builds(VaultDomain, chain_id=st.integers(1, 2**64), vault=addresses)


@settings(max_examples=40, deadline=None)
@given(withdrawals, domains)
def test_withdrawal_digest_matches_eth_account(withdrawal: Withdrawal, domain: VaultDomain) -> None:
    signable = encode_typed_data(full_message=typed_data(domain, withdrawal))
    assert _hash_eip191_message(signable) == withdrawal.digest(domain)


@settings(max_examples=10, deadline=None)
@given(withdrawals, domains, st.binary(min_size=32, max_size=32))
def test_signatures_recover_their_signer(
    withdrawal: Withdrawal, domain: VaultDomain, seed: bytes
) -> None:
    key = (int.from_bytes(seed, "big") % (2**255)) + 1
    private = key.to_bytes(32, "big")
    signature = sign_digest(private, withdrawal.digest(domain))
    address = bytes.fromhex(Account.from_key(private).address[2:])
    assert recover(withdrawal.digest(domain), signature) == address
    other = VaultDomain(domain.chain_id + 1, domain.vault)
    assert recover(withdrawal.digest(other), signature) != address
