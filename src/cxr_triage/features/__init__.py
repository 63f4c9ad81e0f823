"""Embeddings from a frozen backbone."""
