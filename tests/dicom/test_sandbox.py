"""Decompression bombs and failing decoders end as rejections with a reason, never in the daemon.

The bombs are real streams: a phantom radiograph compressed with the installed encoders, then its
own header patched to announce a huge image, and a deflated data set that inflates a thousandfold.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

from edge.config import Config, DicomConfig, ServiceConfig
from edge.dicom.decode import Rejection
from edge.dicom.sandbox import DecodeSandbox, SandboxLimits, stream_size
from edge.pipeline import Pipeline

LIMITS = SandboxLimits(memory_bytes=1 << 30, timeout_s=30, max_dataset_bytes=64 << 20)


def compressed(image: Path, syntax: pydicom.uid.UID) -> pydicom.Dataset:
    ds = pydicom.dcmread(image)
    ds.compress(syntax, generate_instance_uid=False)
    return ds


def part10(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def first_fragment_offset(ds: pydicom.Dataset) -> int:
    """Where the first fragment's bytes begin inside Pixel Data."""
    offsets_length = struct.unpack("<I", ds.PixelData[4:8])[0]
    return 8 + int(offsets_length) + 8


def bomb(image: Path, syntax: pydicom.uid.UID) -> bytes:
    """A valid compressed radiograph whose pixel stream announces an image of gigabytes."""
    ds = compressed(image, syntax)
    data = bytearray(ds.PixelData)
    start = first_fragment_offset(ds)
    if syntax == JPEG2000Lossless:
        siz = data.index(b"\xff\x51", start)
        data[siz + 6 : siz + 14] = struct.pack(">II", 60000, 60000)  # Xsiz, Ysiz
        data[siz + 22 : siz + 30] = struct.pack(">II", 60000, 60000)  # one tile: XTsiz, YTsiz
    else:
        sof = data.index(b"\xff\xf7", start)
        data[sof + 5 : sof + 9] = struct.pack(">HH", 65535, 65535)
    ds.PixelData = bytes(data)
    return part10(ds)


def deflate_bomb(image: Path, inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian file whose data set ends in `inflated_bytes` of zeros."""
    ds = pydicom.dcmread(image)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(body.getvalue())]
    chunks.append(deflater.compress(struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, inflated_bytes)))
    zeros = bytes(1 << 24)
    for _ in range(inflated_bytes >> 24):
        chunks.append(deflater.compress(zeros))
    chunks.append(deflater.flush())
    return b"\0" * 128 + b"DICM" + meta.getvalue() + b"".join(chunks)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qc.conftest import fault_case, write_case

    return write_case(fault_case("ap", "cut_top", 61, size_px=512), tmp_path_factory.mktemp("sandbox"))


@pytest.fixture
def sandbox() -> Iterator[DecodeSandbox]:
    box = DecodeSandbox(LIMITS)
    yield box
    box.close()


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_a_compressed_image_comes_back_uncompressed_and_identical(
    sandbox: DecodeSandbox, image: Path, syntax: pydicom.uid.UID
) -> None:
    native = pydicom.dcmread(io.BytesIO(sandbox.transcode(part10(compressed(image, syntax)))))
    original = pydicom.dcmread(image)
    assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert native.SOPInstanceUID == original.SOPInstanceUID  # not a new instance
    assert (native.pixel_array == original.pixel_array).all()  # lossless


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_a_stream_announcing_a_huge_image_is_refused_before_decoding(
    sandbox: DecodeSandbox, image: Path, syntax: pydicom.uid.UID
) -> None:
    with pytest.raises(Rejection) as refused:
        sandbox.transcode(bomb(image, syntax))
    assert refused.value.reason == "stream_size_mismatch" and "x 512" in refused.value.message
    assert sandbox.transcode(part10(compressed(image, syntax)))  # the same child goes on serving


def test_the_stream_header_is_read_for_each_codec(image: Path) -> None:
    for syntax, size in ((JPEG2000Lossless, (60000, 60000)), (JPEGLSLossless, (65535, 65535))):
        ds = pydicom.dcmread(io.BytesIO(bomb(image, syntax)))
        offsets_length = struct.unpack("<I", ds.PixelData[4:8])[0]
        fragment = next(generate_fragments(ds.PixelData[8 + offsets_length :]))
        assert stream_size(fragment) == size
    assert stream_size(b"\xff\xd8\xff\xc0\x00\x11\x08\x01\x00\x02\x00\x01") == (256, 512)  # baseline JPEG SOF0
    assert stream_size(b"not a stream") is None


def test_a_deflate_bomb_is_refused_at_the_inflation_limit(sandbox: DecodeSandbox, image: Path) -> None:
    data = deflate_bomb(image, 256 << 20)
    assert len(data) < 1 << 20  # 256 MiB of zeros deflate to a few hundred KB
    with pytest.raises(Rejection) as refused:
        sandbox.transcode(data)
    assert refused.value.reason == "too_large"
    small = deflate_bomb(image, 1 << 20)  # the same, inflating to a size within the limit: read as usual
    native = pydicom.dcmread(io.BytesIO(sandbox.transcode(small)))
    assert native.SOPInstanceUID == pydicom.dcmread(image).SOPInstanceUID


def test_a_decoder_out_of_time_is_killed_and_the_next_image_gets_a_fresh_one(image: Path) -> None:
    slow = DecodeSandbox(SandboxLimits(memory_bytes=1 << 30, timeout_s=0.05, max_dataset_bytes=64 << 20))
    try:
        with pytest.raises(Rejection) as refused:
            slow.transcode(part10(compressed(image, JPEG2000Lossless)))  # the child is still importing
        assert refused.value.reason == "decode_timeout"
    finally:
        slow.close()


def test_a_decoder_that_dies_is_a_rejection(image: Path) -> None:
    starved = DecodeSandbox(SandboxLimits(memory_bytes=32 << 20, timeout_s=30, max_dataset_bytes=64 << 20))
    try:
        with pytest.raises(Rejection) as refused:  # 32 MiB of address space: the child cannot even start
            starved.transcode(part10(compressed(image, JPEG2000Lossless)))
        assert refused.value.reason == "decoder_crashed"
    finally:
        starved.close()


def test_the_pipeline_rejects_bombs_with_the_uid_and_judges_compressed_images(image: Path, tmp_path: Path) -> None:
    config = Config(
        dicom=DicomConfig(max_dataset_bytes=64 << 20),
        service=ServiceConfig(spool_dir=tmp_path / "spool", outbox_path=tmp_path / "o.sqlite"),
    )
    pipeline = Pipeline(config)
    try:
        uid = pydicom.dcmread(image).SOPInstanceUID
        bombs = {"stream_size_mismatch": bomb(image, JPEG2000Lossless), "too_large": deflate_bomb(image, 256 << 20)}
        for reason, data in bombs.items():
            verdict = pipeline.process(data).verdict
            assert (verdict.verdict, verdict.reason_code) == ("rejected", reason)
            assert verdict.image["sop_instance_uid"] == uid
        judged = pipeline.process(part10(compressed(image, JPEGLSLossless))).verdict
        plain = pipeline.process(image).verdict
        assert judged.verdict == plain.verdict != "rejected"
        assert judged.image["transfer_syntax"] == "JPEG-LS Lossless Image Compression"
    finally:
        pipeline.close()
