"""The BaaS B&P storage node: libp2p peers holding encrypted, erasure-coded record shards."""
