"""The verifiable record log: RFC 9162 Merkle tree (pure), later its state machine and anchoring."""
