"""Benchmarks that print figures (never asserted in tests: this machine is shared and noisy)."""
