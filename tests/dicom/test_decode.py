"""DICOM decoding: what real modalities send decodes to the same display; what is not a radiograph is refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from edge.dicom.decode import Rejection, decode, decode_file, read_dataset
from edge.imaging.radiograph import Radiograph
from tests.conftest import PYDICOM_FILES, ideal_acquisition, render_case
from tools.phantom.dataset import image_dataset
from tools.phantom.dicom_io import write_dicom

pydicom_data = pytest.importorskip("data_store", reason="pydicom-data (pip install pydicom-data) holds the CR files")
STORE = Path(pydicom_data.__file__).parent / "data"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("decode")
    image = render_case(ideal_acquisition("ap", projection="AP", photometric="MONOCHROME2"), size_px=512)
    path = folder / "ap.dcm"
    write_dicom(image_dataset(image, 3), path, "none")
    return path


def _as(path: Path, **tags: object) -> Dataset:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def test_phantom_round_trips_through_every_lossless_syntax(phantom: Path, tmp_path: Path) -> None:
    reference = decode_file(phantom).pixels
    ds = pydicom.dcmread(phantom)
    for compression in ("rle", "jpegls", "j2k"):
        out = tmp_path / f"{compression}.dcm"
        write_dicom(pydicom.dcmread(phantom), out, compression)
        assert np.array_equal(decode_file(out).pixels, reference), compression
    deflated = tmp_path / "deflate.dcm"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    assert decode_file(deflated).transfer_syntax.startswith("Deflated")
    assert np.array_equal(decode_file(deflated).pixels, reference)


def test_jpeg_baseline_8_bit_decodes_close_to_the_original(phantom: Path) -> None:
    ds = pydicom.dcmread(phantom)
    reference = decode(ds).pixels
    eight = np.rint(ds.pixel_array.astype(np.float64) / (2**ds.BitsStored - 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight).save(buffer, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.WindowCenter, ds.WindowWidth = ds.WindowCenter * 255 / 65535, ds.WindowWidth * 255 / 65535
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].is_undefined_length = True
    shown = decode(ds).pixels
    assert np.abs(shown - reference).mean() < 0.02


@pytest.mark.parametrize(
    ("name", "syntax"),
    [("JPGExtended.dcm", "JPEG Extended"), ("JPEG-LL.dcm", "JPEG Lossless"), ("RG1_J2KI.dcm", "JPEG 2000")],
)
def test_real_compressed_files_decode(name: str, syntax: str) -> None:
    path = PYDICOM_FILES / name if (PYDICOM_FILES / name).exists() else STORE / name
    ds = pydicom.dcmread(path)
    ds.Modality = "DX"  # NM test files carry the codecs we need; the header check is tested elsewhere
    r = decode(ds)
    assert r.transfer_syntax.startswith(syntax)
    assert r.pixels.dtype == np.float32 and 0.0 <= r.pixels.min() < r.pixels.max() <= 1.0


def test_real_cr_monochrome1_with_zero_spacing() -> None:
    """pydicom's CR chest: MONOCHROME1, JPEG 2000, Pixel Spacing 0\\0."""
    lossless, lossy = decode_file(STORE / "RG1_UNCR.dcm"), decode_file(STORE / "RG1_J2KI.dcm")
    assert lossless.spacing_source == "unknown" and lossless.pixel_spacing_mm is None
    assert lossless.photometric == "MONOCHROME1" and lossless.body_part == "CHEST"
    assert np.abs(lossless.pixels - lossy.pixels).mean() < 0.02
    # MONOCHROME1 is shown inverted: the lungs (low stored values after inversion) are dark
    rows, cols = lossless.pixels.shape
    assert lossless.pixels[rows // 3, cols // 4] < lossless.pixels[rows // 2, cols // 2]


def _open(r: Radiograph) -> tuple[slice, slice]:
    """The part of the image no shutter covers (shutters are shown as collimation, whatever their value)."""
    r0, r1, c0, c1 = r.shutter.box if r.shutter is not None else (0, r.shape[0], 0, r.shape[1])
    return slice(r0, r1), slice(c0, c1)


def test_presentation_lut_inverse_inverts_monochrome2(phantom: Path) -> None:
    plain = decode_file(phantom)
    inverse = decode(_as(phantom, PresentationLUTShape="INVERSE"))
    inside = _open(plain)
    assert np.abs((1.0 - plain.pixels[inside]) - inverse.pixels[inside]).max() < 1e-5


def test_rescale_slope_and_intercept_keep_the_display(phantom: Path) -> None:
    ds = pydicom.dcmread(phantom)
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        delattr(ds, keyword)
    plain = decode(ds).pixels
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -1000.0
    assert np.abs(decode(ds).pixels - plain).max() < 1e-5


def test_pixel_padding_shows_as_background_and_does_not_stretch_the_range(phantom: Path) -> None:
    ds = pydicom.dcmread(phantom)
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        delattr(ds, keyword)
    arr = (ds.pixel_array // 2).astype(np.uint16)  # leaves the top half of the range unused
    ds.BitsStored, ds.HighBit = 16, 15
    ds.PixelData = arr.tobytes()
    reference = decode(ds).pixels
    arr[:, :40] = 0xFFFF  # a padded border at a value no pixel uses
    ds.PixelData = arr.tobytes()
    ds.PixelPaddingValue = 0xFFFF
    r = decode(ds)
    assert np.all(r.pixels[:, :40] == 0.0)
    assert np.abs(r.pixels[:, 40:] - reference[:, 40:]).max() < 1e-5  # padding did not change the range


def test_non_square_pixels_are_resampled_to_square(phantom: Path) -> None:
    ds = pydicom.dcmread(phantom)
    row_mm = float(ds.PixelSpacing[0])
    ds.PixelSpacing = [row_mm, 2 * row_mm]
    r = decode(ds)
    assert r.resampled_to_square and r.pixels.shape == (ds.Rows, 2 * ds.Columns)
    assert r.pixel_spacing_mm == (row_mm, row_mm)


def test_eight_bit_monochrome1(phantom: Path) -> None:
    ds = pydicom.dcmread(phantom)
    reference = decode(ds).pixels
    eight = np.rint(ds.pixel_array / (2**ds.BitsStored - 1) * 255).astype(np.uint8)
    ds.PixelData, ds.BitsAllocated, ds.BitsStored, ds.HighBit = (255 - eight).tobytes(), 8, 8, 7
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 255 - float(ds.WindowCenter) * 255 / 65535, float(ds.WindowWidth) * 255 / 65535
    assert np.abs(decode(ds).pixels - reference).max() < 0.01


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("MR_small.dcm", "not_projection_radiograph"),
        ("CT_small.dcm", "not_projection_radiograph"),
        ("US1_UNCR.dcm", "not_projection_radiograph"),
        ("SC_rgb.dcm", "not_greyscale"),
        ("SC_rgb_2frame.dcm", "not_greyscale"),
        ("emri_small.dcm", "not_projection_radiograph"),
        ("rtplan.dcm", "not_projection_radiograph"),
    ],
)
def test_non_radiographs_are_rejected_with_a_reason(source: str, reason: str) -> None:
    found = list(PYDICOM_FILES.rglob(source)) + list(STORE.rglob(source))
    if not found:
        pytest.skip(f"{source} not in this pydicom's test data")
    with pytest.raises(Rejection) as info:
        decode_file(found[0])
    assert info.value.reason == reason and info.value.message


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"NumberOfFrames": 2}, "multi_frame"),
        ({"Rows": 100}, "absurd_size"),
        ({"Columns": 9000}, "absurd_size"),
        ({"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3}, "not_greyscale"),
        ({"Modality": "CT"}, "not_projection_radiograph"),
        ({"BitsAllocated": 32}, "unsupported_bit_depth"),
    ],
)
def test_header_rejections(phantom: Path, change: dict[str, object], reason: str) -> None:
    with pytest.raises(Rejection) as info:
        decode(_as(phantom, **change))
    assert info.value.reason == reason


def test_missing_pixel_data_and_non_dicom_bytes(phantom: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(phantom)
    del ds.PixelData
    with pytest.raises(Rejection, match="pixel data") as info:
        decode(ds)
    assert info.value.reason == "no_pixel_data"
    with pytest.raises(Rejection) as info:
        read_dataset(b"this is not a DICOM file at all" * 10)
    assert info.value.reason == "not_dicom"
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(phantom.read_bytes()[:4000])
    with pytest.raises(Rejection):
        decode_file(truncated)


def _table_display(ds: Dataset) -> np.ndarray:
    """The display by looking every pixel up in the display table: the reference for the fast path."""
    from edge.dicom.decode import _display_table

    stored = ds.pixel_array
    lo, hi = int(stored.min()), int(stored.max())
    return np.asarray(_display_table(ds, 0, hi, (lo, hi))[stored])


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_a_window_computed_by_arithmetic_equals_the_table(phantom: Path, function: str) -> None:
    from edge.dicom.decode import LINEAR_RAMP_TOLERANCE, _display_table, _linear_ramp

    ds = pydicom.dcmread(phantom)
    low, mid, high = np.percentile(ds.pixel_array[_open(decode(ds))], [20, 50, 80])
    ds.VOILUTFunction, ds.WindowCenter, ds.WindowWidth = function, int(mid), int(high - low)  # clips both ends
    stored = ds.pixel_array
    table = _display_table(ds, 0, int(stored.max()), (int(stored.min()), int(stored.max())))
    assert (_linear_ramp(table) is None) == (function == "SIGMOID")  # a sigmoid keeps the table
    decoded = decode(ds)
    inside = _open(decoded)
    shown = decoded.pixels[inside]
    assert np.abs(shown - _table_display(ds)[inside]).max() <= LINEAR_RAMP_TOLERANCE
    if function != "SIGMOID":
        assert 0.2 < float((shown == 0.0).mean() + (shown == 1.0).mean()) < 0.8


def test_bits_above_bits_stored_are_ignored_and_clean_data_is_not_copied(phantom: Path) -> None:
    ds = pydicom.dcmread(phantom)
    ds.PixelData = (ds.pixel_array >> 2).astype(np.uint16).tobytes()
    ds.BitsStored, ds.HighBit = 14, 13
    clean = decode(ds)
    assert not clean.stored.flags.writeable  # a view on the received bytes
    arr = ds.pixel_array.copy()
    arr[::7] |= np.uint16(1 << 15)  # an overlay written into the unused top bit
    ds.PixelData = arr.tobytes()
    dirty = decode(ds)
    assert np.array_equal(dirty.stored, clean.stored)
    assert np.abs(dirty.pixels - clean.pixels).max() < 1e-6


def test_signed_values_are_sign_extended_from_bits_stored() -> None:
    from edge.dicom.decode import _within_bits_stored

    values = np.array([[-3, 5], [-2048, 2047]], dtype=np.int16)
    raw = values.view(np.uint16) & np.uint16(0x0FFF)  # 12 bits stored, top bits zero as some writers leave them
    extended, value_range = _within_bits_stored(raw.view(np.int16), 12)
    assert np.array_equal(extended, values) and value_range == (-2048, 2047)
    assert _within_bits_stored(values, 12)[0] is values  # already sign-extended: kept as it is


def test_detector_clipping_is_found_per_region_on_square_and_resampled_pixels(phantom: Path) -> None:
    ds = pydicom.dcmread(phantom)
    arr = ds.pixel_array.copy()
    top = 2**ds.BitsStored - 1
    arr[100:140, 200:260] = top  # saturated
    arr[300:310, 10:20] = 0  # starved
    ds.PixelData = arr.tobytes()
    r = decode(ds)
    whole = r.clipped(slice(None), slice(None))
    assert whole.shape == r.pixels.shape
    assert np.count_nonzero(whole[100:140, 200:260]) == 40 * 60 and np.count_nonzero(whole[300:310, 10:20]) == 100
    assert np.count_nonzero(r.clipped(slice(100, 140, 2), slice(200, 260, 2))) == 20 * 30
    row_mm = float(ds.PixelSpacing[0])
    ds.PixelSpacing = [row_mm, 2 * row_mm]  # columns twice as wide: resampled to twice as many
    wide = decode(ds)
    assert wide.resampled_to_square
    assert np.count_nonzero(wide.clipped(slice(100, 140), slice(400, 520))) == 40 * 120
    assert not wide.clipped(slice(100, 140), slice(520, 600)).any()
