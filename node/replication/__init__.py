"""The replicated log of a node: drives the Raft core (node/consensus) over libp2p and LevelDB."""
