"""Evaluation of a shipped model on held-out phantom images."""
