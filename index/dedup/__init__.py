"""Embeddings, FAISS indexes and duplicate groups: `index-clips` and `search-clips`."""
