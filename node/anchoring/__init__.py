"""Chain anchoring: committing the record log's Merkle roots to the AnchorRegistry contract."""
