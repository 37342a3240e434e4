"""The decode sandbox's child process: its limits are set before any decoder is imported, so the
address-space limit covers the interpreter, numpy, pydicom and the codecs too (edge.dicom.sandbox).

    python -m edge.dicom.decoder_process MEMORY_BYTES MAX_DATASET_BYTES
"""

from __future__ import annotations

import resource
import sys


def main(argv: list[str]) -> None:
    memory_bytes, max_dataset_bytes = int(argv[0]), int(argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing decoder leaves no image data in a core file
    from edge.dicom.sandbox import serve

    serve(memory_bytes, max_dataset_bytes)


if __name__ == "__main__":
    main(sys.argv[1:])
