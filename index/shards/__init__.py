"""Training shards and their data card: `build-shards`."""
