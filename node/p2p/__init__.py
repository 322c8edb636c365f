"""The libp2p layer of a storage node: identity, a members-only host, the shard protocol.

libp2p (trio) runs in one dedicated thread; :class:`node.p2p.service.P2PNode` is the
asyncio-facing object the rest of the node uses. Only :mod:`node.p2p.bridge` touches both
asyncio and trio.
"""
