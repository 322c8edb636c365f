"""Which node forwarded a proposal: forwards to the leader are signed with the node's own key.

Every node and every gateway hold the same node API token, so the token says only "one of the
cluster's processes". That is enough for what a gateway may propose anyway (records, and
partners' operations it already vouches for), but not for a vault deposit credit (log feature
10, :mod:`node.consensus.deposit_ops`): it moves value out of the platform's vault account on
the word of whoever proposes it, and only a node's deposit watcher may do that. So a node signs
every body it forwards to the leader (:class:`ForwardSigner`, in :class:`LeaderRoute
<node.replication.leader_route.LeaderRoute>`) with its libp2p identity key (Ed25519), naming its
peer id, and the leader takes a forwarded proposal carrying a deposit credit only with a valid
signature of a committed member (:func:`verify_forwarder`). The peer id embeds the Ed25519
public key, so the check needs no key distribution beyond the membership the log already holds.

The signed message is domain-separated and binds the route (path), the signing time and the
body's hash. A signature is accepted within :data:`FORWARD_SIGNATURE_WINDOW_MS` of the leader's
clock: a captured forward can be replayed only briefly and only as itself, and every deposit
credit is idempotent by its record id (chain, transaction, log index) anyway.

What this does not cover: one compromised node can still sign a forged credit (it holds its
own key). Attestation by several nodes is the next step (docs/vault.md, docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from libp2p.peer.id import ID

from node.errors import AuthenticationFailed

__all__ = [
    "FORWARDER_HEADER",
    "FORWARD_SIGNATURE_HEADER",
    "FORWARD_SIGNATURE_WINDOW_MS",
    "FORWARD_SIGNED_MS_HEADER",
    "ForwardSigner",
    "verify_forwarder",
]

FORWARDER_HEADER = "X-Baas-Forwarder"
FORWARD_SIGNATURE_HEADER = "X-Baas-Forward-Signature"
FORWARD_SIGNED_MS_HEADER = "X-Baas-Forward-Signed-Ms"
# Wide enough for clock skew between nodes and a forward's own retries, short for replays.
FORWARD_SIGNATURE_WINDOW_MS = 60_000
_DOMAIN = b"baas/forward/v1"
_SIGNATURE_HEX_MAX = 256  # an Ed25519 signature is 128 hex digits
_PEER_ID_MAX = 128


def _message(path: str, signed_ms: int, body: bytes) -> bytes:
    return b"\0".join(
        (_DOMAIN, path.encode(), str(signed_ms).encode(), hashlib.sha256(body).digest())
    )


@dataclass(frozen=True, slots=True)
class ForwardSigner:
    """This node's name and key, for the headers of what it forwards."""

    peer_id: str
    sign: Callable[[bytes], bytes]

    def headers(self, path: str, body: bytes, now_ms: int) -> dict[str, str]:
        signature = self.sign(_message(path, now_ms, body))
        return {
            FORWARDER_HEADER: self.peer_id,
            FORWARD_SIGNED_MS_HEADER: str(now_ms),
            FORWARD_SIGNATURE_HEADER: signature.hex(),
        }


def _refused(detail: str, code: str) -> AuthenticationFailed:
    return AuthenticationFailed(detail, code=code, param=FORWARDER_HEADER)


def verify_forwarder(
    headers: Mapping[str, str],
    path: str,
    body: bytes,
    now_ms: int,
    members: Container[str],
) -> str:
    """The peer id of the committed member that signed this forward; else AuthenticationFailed.

    Codes: ``forward_unsigned`` (no or malformed headers), ``forwarder_not_member`` (a peer
    id the membership does not hold), ``forward_signature_expired`` (signed outside the
    window), ``forward_signature_invalid`` (not this body, path or time, or another key).
    """
    forwarder = headers.get(FORWARDER_HEADER, "")
    signed = headers.get(FORWARD_SIGNED_MS_HEADER, "")
    signature_hex = headers.get(FORWARD_SIGNATURE_HEADER, "")
    if not forwarder or not signed or not signature_hex:
        raise _refused("this proposal must come signed by a member node", "forward_unsigned")
    if (
        len(forwarder) > _PEER_ID_MAX
        or len(signature_hex) > _SIGNATURE_HEX_MAX
        or not signed.isascii()
        or not signed.isdigit()
        or len(signed) > 16
    ):
        raise _refused("malformed forward signature headers", "forward_unsigned")
    if forwarder not in members:
        raise _refused(f"{forwarder} is not a member of this cluster", "forwarder_not_member")
    signed_ms = int(signed)
    if abs(now_ms - signed_ms) > FORWARD_SIGNATURE_WINDOW_MS:
        raise _refused(
            f"the forward was signed {abs(now_ms - signed_ms)} ms away from this node's clock",
            "forward_signature_expired",
        )
    try:
        public_key = ID.from_base58(forwarder).extract_public_key()
        signature = bytes.fromhex(signature_hex)
        valid = public_key is not None and public_key.verify(
            _message(path, signed_ms, body), signature
        )
    except Exception as exc:
        raise _refused(
            f"the forward's signature cannot be checked ({type(exc).__name__})",
            "forward_signature_invalid",
        ) from exc
    if not valid:
        raise _refused("the forward's signature does not match", "forward_signature_invalid")
    return forwarder
