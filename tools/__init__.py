"""Workstation-side tools (phantom, training, export, benchmarks). Never shipped to the Jetson."""
