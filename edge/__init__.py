"""edge-qc: lumbar-spine radiograph quality control at the X-ray room's edge."""

__version__ = "0.1.0"
