"""The business modules of the BaaS B&P network: pure state machines that move value.

``business.ledger`` is the double-entry ledger (accounts, transfers, assets) every later
module (the Bridge, payments, the Market, withdrawals) stands on. Each module is a sans-IO
core: it reads state through a ``get``-only view and returns its writes under one key prefix,
so the node applies them in the same LevelDB write batch as the Raft applied index.
"""
