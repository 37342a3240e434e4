"""Synthetic lumbar-spine radiographs: a parametric 3D phantom projected as DRRs, with exact truth.

Everything here is phantom data. Figures measured on it are phantom figures, never clinical ones.
"""
