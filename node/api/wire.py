"""Names both sides of the node HTTP API agree on (the node serves, gateways and peers call)."""

from __future__ import annotations

__all__ = [
    "APPLIED_INDEX_HEADER",
    "DEADLINE_HEADER",
    "INCARNATION_PATH",
    "MEMBERS_PATH",
    "MSGPACK",
    "QUEUE_DEPTH_HEADER",
    "QUEUE_MAX_HEADER",
]

MSGPACK = "application/msgpack"
# The caller's remaining budget in milliseconds (relative: no clock agreement needed).
DEADLINE_HEADER = "X-Baas-Deadline-Ms"
# On every answer: records this node is coordinating, and its bound.
QUEUE_DEPTH_HEADER = "X-Baas-Queue-Depth"
QUEUE_MAX_HEADER = "X-Baas-Queue-Max"
# On a read of the replicated state, found (200) or not (404): the applied index the answer is
# at least as fresh as. A reader asking every node keeps the freshest answer; a 404 counts too,
# since an unlink makes "not found" the newer state.
APPLIED_INDEX_HEADER = "X-Baas-Applied-Index"
# Cluster membership: GET lists it, POST adds or changes a member, DELETE .../{peer} removes one
# (node/membership.py serves it; nodes forward to the leader; baas-cluster calls it).
MEMBERS_PATH = "/internal/v1/members"
# A peer's view of a node's incarnation: GET .../{peer} answers what the committed membership
# records for it (node/incarnation.py asks it before a fresh node's Raft core starts).
INCARNATION_PATH = "/internal/v1/incarnation"
