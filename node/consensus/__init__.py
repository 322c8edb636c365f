"""The replicated, ordered record log (Raft, sans-IO). Empty until the consensus issue lands."""
