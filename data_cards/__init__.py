"""The data card template that build-shards fills in."""
