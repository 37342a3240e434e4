"""edge-qc: lumbar-spine radiograph quality control at the X-ray room's edge."""

import os

# numpy's OpenBLAS threads spin after every matrix product and starve ONNX Runtime's own threads:
# measured here, inference right after preprocessing took 55 ms instead of 28. The pipeline's
# products are small, so one BLAS thread is enough. Set before numpy loads; the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
