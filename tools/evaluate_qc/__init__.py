"""QC evaluation on held-out phantom images: python -m tools.evaluate_qc."""
