"""Quality control: structures, the versioned QC standard, measurements and verdicts (pure, no I/O)."""
