"""Node storage: LevelDB shard database, erasure coding, encryption envelope and placement."""
