"""Decompression in a child process with a memory and a time limit: a bomb costs a rejected verdict.

A compressed pixel stream says how large it will be only in its own header, which may disagree with
the DICOM header (a JPEG 2000 codestream announcing 60000 x 60000 under Rows = 2048), and a deflated
data set may inflate a thousandfold. Decoders are C libraries that allocate what the stream asks for
and may hold the interpreter while they work, so decoding them in the daemon's process risks the
process (memory kill) and freezes everything in it (DICOM server, metrics, watchdog ping) while it runs.

So the daemon never decompresses. A compressed or deflated dataset goes to a child process
(`python -m edge.dicom.decoder_process`) that runs under an address-space limit (RLIMIT_AS) and, from the
parent, a wall-clock limit. Before decoding, the child inflates a deflated data set only up to
`max_dataset_bytes`, and compares the pixel stream's own dimensions with Rows and Columns. It answers
with the same dataset uncompressed (Explicit VR Little Endian, the SOP Instance UID unchanged), which
the parent reads as a view, as it reads any uncompressed image. A child that is killed, runs out of
memory or time becomes a `Rejection` with its own reason code, and the next image gets a fresh child.
Uncompressed datasets never leave the parent: their pixels cannot be larger than the bytes received.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import IO, Final

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from edge.dicom.decode import UNPARSABLE, Rejection, check_header, read_file_meta, undecodable

UNCOMPRESSED: Final = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian})
_LENGTH = struct.Struct("<Q")
_OK, _REJECTED = b"K", b"R"
# A 12.5 MB image through the default 64 KiB pipe costs ~40 ms of switching between the two processes;
# through a 1 MiB pipe (the unprivileged maximum, /proc/sys/fs/pipe-max-size) ~7 ms.
F_SETPIPE_SZ: Final = 1031
PIPE_BYTES: Final = 1 << 20
# The child's threads and pools: one image at a time, and no large virtual reservations under RLIMIT_AS
_CHILD_ENV: Final = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "1",
}


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int  # the child's address space
    timeout_s: float  # per dataset, from request to answer
    max_dataset_bytes: int  # a deflated data set may inflate to at most this


def needs_sandbox(syntax: str) -> bool:
    """Whether a dataset in this transfer syntax must be decoded in the sandbox ("" = not Part 10:
    the parent's reader refuses it without decoding anything)."""
    return bool(syntax) and syntax not in UNCOMPRESSED


class DecodeSandbox:
    """The parent's side: one child at a time, started ahead of need, replaced when it dies."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start a child now (it imports its decoders while the parent goes on)."""
        with self._lock:
            self._running()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge.dicom.decoder_process",
                    str(self.limits.memory_bytes),
                    str(self.limits.max_dataset_bytes),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, **_CHILD_ENV},
                close_fds=True,
            )
            for pipe in (self._child.stdin, self._child.stdout):
                with contextlib.suppress(OSError, AttributeError):  # Linux only; the default 64 KiB works too
                    fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[union-attr]
        return self._child

    def transcode(self, data: bytes) -> bytes:
        """`data` (a compressed or deflated Part 10 dataset) as an uncompressed Part 10 dataset;
        raises `Rejection` for a stream that is refused, too large, too slow, or kills its decoder."""
        with self._lock:
            child = self._running()
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                child.kill()

            timer = threading.Timer(self.limits.timeout_s, expire)
            timer.start()
            try:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(_LENGTH.pack(len(data)))
                child.stdin.write(data)
                child.stdin.flush()
                kind = _read_exactly(child.stdout, 1)
                payload = _read_exactly(child.stdout, _LENGTH.unpack(_read_exactly(child.stdout, _LENGTH.size))[0])
            except (OSError, EOFError, struct.error) as exc:
                self._child = None
                child.kill()
                child.wait()
                raise self._failure(child.returncode, timed_out.is_set()) from exc
            finally:
                timer.cancel()
        if kind == _REJECTED:
            reason = json.loads(payload)
            raise Rejection(str(reason["reason"]), str(reason["message"]), detail=str(reason.get("detail", "")))
        return payload

    def _failure(self, returncode: int | None, timed_out: bool) -> Rejection:
        if timed_out:
            return Rejection(
                "decode_timeout", f"decoding the pixel data took longer than {self.limits.timeout_s:g} s: refused"
            )
        return Rejection(
            "decoder_crashed",
            f"the pixel data decoder ended abnormally (exit status {returncode}): a corrupt or hostile stream",
        )

    def close(self) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the decoding process ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the child -------------------------------------------------------------------------------------


def _inflated(data: bytes, body_start: int, limit: int) -> bytes:
    """The deflated part of a Deflated Explicit VR Little Endian file, inflated up to `limit` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(data[body_start:], limit + 1)
    except zlib.error as exc:
        raise Rejection("undecodable", "the deflated data set could not be inflated: damaged", detail=str(exc)) from exc
    if len(body) > limit:
        raise Rejection("too_large", f"the deflated data set inflates to more than {limit} bytes: refused")
    return body


def _read(data: bytes, max_dataset_bytes: int) -> tuple[object, str]:
    import pydicom
    from pydicom.filereader import read_dataset

    stream = io.BytesIO(data)
    meta = read_file_meta(stream)
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if syntax == DeflatedExplicitVRLittleEndian:
        body = io.BytesIO(_inflated(data, stream.tell(), max_dataset_bytes))
        ds = read_dataset(body, is_implicit_VR=False, is_little_endian=True)
        ds.file_meta = meta
    else:
        ds = pydicom.dcmread(io.BytesIO(data))
    return ds, syntax


# Markers that start a frame header with the frame's size (ITU T.81 B.2.2; JPEG-LS T.87 SOF55)
_SOF_MARKERS: Final = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})


def stream_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) as a JPEG, JPEG-LS or JPEG 2000 stream's own header gives them; None when the
    header is not found (the decoder then runs under the limits alone)."""
    siz = fragment.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ (also inside a JP2 box)
    if siz >= 0 and len(fragment) >= siz + 24:
        x, y, x0, y0 = struct.unpack(">IIII", fragment[siz + 8 : siz + 24])
        return y - y0, x - x0
    if not fragment.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(fragment):
        if fragment[pos] != 0xFF:
            return None
        marker = fragment[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", fragment[pos + 2 : pos + 4])[0]
        if marker in _SOF_MARKERS and pos + 9 <= len(fragment):
            rows, cols = struct.unpack(">HH", fragment[pos + 5 : pos + 9])
            return rows, cols
        pos += 2 + length
    return None


def _check_stream(ds: object) -> None:
    """Refuse a pixel stream whose own header disagrees with Rows and Columns (a bomb's signature)."""
    from pydicom.dataset import Dataset
    from pydicom.encaps import generate_fragments

    assert isinstance(ds, Dataset)
    pixel_data = ds.get("PixelData")
    if not isinstance(pixel_data, bytes | bytearray) or len(pixel_data) < 8:
        return
    offsets_length = struct.unpack("<I", pixel_data[4:8])[0]
    try:
        fragment = next(generate_fragments(pixel_data[8 + offsets_length : 8 + offsets_length + (1 << 20)]), b"")
    except (ValueError, StopIteration):
        fragment = b""
    found = stream_size(fragment[: 1 << 16])
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if found is not None and found[0] != 0 and found != (rows, cols):  # JPEG may say 0 rows (a DNL later)
        raise Rejection(
            "stream_size_mismatch",
            f"the compressed pixel stream says {found[0]} x {found[1]} pixels, the header {rows} x {cols}: refused",
        )


def transcode_in_child(data: bytes, max_dataset_bytes: int) -> bytes:
    """What the child does with one dataset (also callable directly, for tests of the checks)."""
    from pydicom.dataset import Dataset

    ds, syntax = _read(data, max_dataset_bytes)
    assert isinstance(ds, Dataset)
    check_header(ds)
    if syntax != DeflatedExplicitVRLittleEndian:
        _check_stream(ds)
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # pydicom raises many types for missing plugins and corrupt streams
            raise Rejection("undecodable", undecodable(syntax), detail=str(exc)) from exc
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _refusal(reason: str, message: str, detail: str = "") -> bytes:
    return json.dumps({"reason": reason, "message": message, "detail": detail}).encode()


def serve(memory_bytes: int, max_dataset_bytes: int) -> None:
    """The child's loop (edge.dicom.decoder_process, under its limits): one dataset in, one answer out,
    until the parent closes the pipe."""
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            header = _read_exactly(source, _LENGTH.size)
        except EOFError:
            return  # the parent went away
        data = _read_exactly(source, _LENGTH.unpack(header)[0])
        try:
            kind, answer = _OK, transcode_in_child(data, max_dataset_bytes)
        except Rejection as rejection:
            kind, answer = _REJECTED, _refusal(rejection.reason, rejection.message, rejection.detail)
        except MemoryError:
            kind, answer = _REJECTED, _refusal("decode_memory", f"decoding needs over {memory_bytes} bytes: refused")
        except Exception as exc:  # a broken dataset pydicom cannot read: the parent's reader says the same
            kind, answer = _REJECTED, _refusal("unreadable", UNPARSABLE, str(exc))
        del data
        sink.write(kind + _LENGTH.pack(len(answer)))
        sink.write(answer)
        sink.flush()


__all__ = ["DecodeSandbox", "SandboxLimits", "needs_sandbox", "stream_size", "transcode_in_child"]
