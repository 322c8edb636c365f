"""Property tests of the decoders behind the node's wire surfaces: whatever a peer sends, each
refuses it with its one typed error (never another exception, which would take down the
reader or the consensus loop) or decodes a message that encodes back to itself.

* ``/baas/raft/1.0.0``: :func:`node.consensus.messages.message_from_wire` raises only
  :class:`PeerProtocolError`;
* ``/baas/shard/1.0.0``: :func:`node.p2p.messages.decode_frame` raises only
  :class:`PeerProtocolError`;
* the node API's index and anchoring forwards: their body decoders raise only their typed
  errors (the handlers map those to 400 problems).

The real-process side (a node gets these frames over libp2p and stays up) is
tests/test_malformed_frames.py.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from node.anchoring.forwarding import decode_forwarded
from node.consensus.messages import WIRE_VERSION, WireLimits, message_from_wire
from node.consensus.record_index import IndexProposal
from node.errors import InvalidRequest, PeerProtocolError, UnsupportedFormat
from node.p2p.messages import FRAME_VERSION, decode_frame, encode_frame

LIMITS = WireLimits(entries_per_message_max=64, bytes_per_message_max=1 << 20)
RAFT_TYPES = (
    *("pre_vote", "vote", "transfer_vote", "timeout_now", "pre_vote_resp", "vote_resp", "app"),
    *("app_resp", "hb", "hb_resp", "snap", "read", "read_resp", "unknown"),
)
RAFT_FIELDS = (
    *("sender", "to", "term", "last_log_index", "last_log_term", "reject", "prev_index"),
    *("prev_term", "entries", "commit", "index", "hint_index", "hint_term", "context", "meta"),
    *("offset", "total_bytes", "chunk", "last"),
)
SHARD_OPS = (
    *("put", "put_ok", "get", "shards", "get_many", "rshards", "has", "has_many", "metas"),
    *("delete", "deleted", "error", "unknown"),
)
SHARD_FIELDS = ("s", "e", "x", "n", "rf", "ex", "rid", "ix", "bad", "rids", "m", "k", "c", "d", "r")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
    ),
    max_leaves=8,
)
# Maps shaped like each protocol's messages (right version, a known or unknown type, fields
# of any type): the decoder's deep paths, not only its first check.
raft_like = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(WIRE_VERSION), values),
        "t": st.one_of(st.sampled_from(RAFT_TYPES), values),
    },
    optional={name: values for name in RAFT_FIELDS},
)
shard_like = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(FRAME_VERSION), values),
        "id": st.one_of(st.integers(min_value=0, max_value=2**32), values),
        "op": st.one_of(st.sampled_from(SHARD_OPS), values),
        "b": st.one_of(
            st.fixed_dictionaries({}, optional={f: values for f in SHARD_FIELDS}), values
        ),
    }
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(raw=st.one_of(raft_like, values))
@example(raw={"v": WIRE_VERSION, "t": ["app"]})  # an unhashable type name
@example(raw={"v": WIRE_VERSION, "t": {"a": 1}})
@example(raw=[WIRE_VERSION, "app"])
def test_raft_decoder_refuses_with_peer_protocol_error_only(raw: Any) -> None:
    with contextlib.suppress(PeerProtocolError):
        message_from_wire(raw, LIMITS)


@FUZZ
@given(raw=st.one_of(shard_like, values))
@example(raw={"v": FRAME_VERSION, "id": 1, "op": ["get"], "b": {}})
def test_shard_decoder_refuses_with_peer_protocol_error_only(raw: Any) -> None:
    payload = msgpack.packb(raw, use_bin_type=True)
    try:
        request_id, message = decode_frame(payload)
    except PeerProtocolError:
        return
    assert decode_frame(encode_frame(request_id, message)[4:]) == (request_id, message)


@FUZZ
@given(payload=st.binary(max_size=200))
@example(payload=b"\xc1")  # never valid msgpack
@example(payload=b"\x92\x01")  # an array cut short
@example(payload=b"\x81\x01\x02")  # a map with an integer key
def test_garbage_bytes_are_refused_by_both_decoders(payload: bytes) -> None:
    with contextlib.suppress(PeerProtocolError):
        decode_frame(payload)
    # what the consensus loop catches around its unpack (node/replication/log.py)
    with contextlib.suppress(PeerProtocolError, msgpack.UnpackException, ValueError):
        message_from_wire(msgpack.unpackb(payload, raw=False), LIMITS)


index_like = st.fixed_dictionaries(
    {},
    optional={
        name: values
        for name in (
            *("rid", "ch", "k", "n", "nodes", "epoch", "owner", "fp", "exp_term"),
            *("exp_index", "sh", "pc"),
        )
    },
)


@FUZZ
@given(body=index_like)
def test_node_api_index_proposals_are_refused_with_unsupported_format_only(
    body: dict[str, Any],
) -> None:
    with contextlib.suppress(UnsupportedFormat):
        IndexProposal.from_body(body)


@FUZZ
@given(body=st.one_of(values, st.fixed_dictionaries({"entry": st.one_of(st.binary(), values)})))
@example(body={"entry": msgpack.packb({"v": 1, "t": ["anchor"]})})
def test_node_api_forwarded_entries_are_refused_with_invalid_request_only(body: Any) -> None:
    with contextlib.suppress(InvalidRequest):
        decode_forwarded(body)
