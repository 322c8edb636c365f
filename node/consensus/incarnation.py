"""Whether a node whose Raft database is fresh may start voting: the pure start-up decision.

A node that lost its data directory must never vote again as the voter it was: it may have
promised its vote in a term it no longer remembers, and a second vote in that term can elect
two leaders. So a node whose Raft database is fresh (no hard state, no log, no snapshot) and
that is a founding member (not ``join_existing``) asks the other founding members what the
committed membership records for it before its Raft core starts (:mod:`node.incarnation` does
the asking). Each answer is a :class:`PeerView`; :func:`start_decision` turns them into one of
three verdicts:

* ``refuse`` -- a peer records another incarnation for this peer id: this node lived before
  and lost its disk. It must come back as a new member (``baas-cluster rejoin-node``).
* ``start`` -- a majority of the founding members (this node included) answered and none
  records an incarnation for it: a new cluster, or a founding member that never ran. A
  majority is needed because any committed record is on a majority of the members' logs.
* ``wait`` -- too few answered: never start voting while unsure (the caller retries, bounded).

The limit of the check: a node that lost its disk before its incarnation was ever committed
(log feature 5 not yet enabled, or the node died within a second of its first start) is not
recognised, as before this check existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["REFUSE", "START", "WAIT", "PeerView", "StartDecision", "start_decision"]

START = "start"
REFUSE = "refuse"
WAIT = "wait"


@dataclass(frozen=True, slots=True)
class PeerView:
    """One founding member's answer about the asking node."""

    peer_id: str  # who answered
    fresh: bool  # the answering node is itself fresh and not started yet (it knows nothing)
    recorded: str  # the incarnation its committed membership records for the asker ("": none)


@dataclass(frozen=True, slots=True)
class StartDecision:
    verdict: str  # START, REFUSE or WAIT
    reason: str
    recorded: str = ""  # on REFUSE: the incarnation the cluster remembers


def start_decision(
    *, incarnation: str, founders: int, answers: Sequence[PeerView]
) -> StartDecision:
    """The verdict for a fresh node of ``incarnation`` among ``founders`` founding members
    (itself included), given the other founders' ``answers`` (one per peer that answered)."""
    for answer in sorted(answers, key=lambda a: a.peer_id):
        if answer.recorded and answer.recorded != incarnation:
            return StartDecision(
                REFUSE,
                f"{answer.peer_id} records incarnation {answer.recorded} for this node",
                answer.recorded,
            )
    answered = len({a.peer_id for a in answers}) + 1  # this node knows nothing of itself
    majority = founders // 2 + 1
    if answered >= majority:
        return StartDecision(START, f"{answered} of {founders} founding members agree")
    return StartDecision(WAIT, f"{answered} of {founders} founding members answered")
