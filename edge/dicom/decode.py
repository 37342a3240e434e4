"""DICOM bytes -> display-ready radiograph (bone bright), or a `Rejection` that says why not.

Display-ready means what a reader sees: Modality LUT, then the VOI LUT or window, then the
Presentation LUT (MONOCHROME1 shown inverted). Training and the appliance both start from here, so
the network sees the same pixels a radiographer does. Anything that is not a single-frame greyscale
projection radiograph is refused with a reason a biomedical engineer can act on, never a traceback:
the appliance sits on a modality's network and will be sent whatever the modality has.
"""

from __future__ import annotations

import datetime as _dt
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian

from edge.dicom.shutter import find as find_shutter
from edge.imaging.preprocess import area_average
from edge.imaging.radiograph import AcquisitionTags, ExposureTags, Radiograph

F32 = NDArray[np.float32]
Bool = NDArray[np.bool_]

# Projection radiography modalities; everything else (CT, MR, US, NM, XA cine...) is refused.
PROJECTION_MODALITIES: Final = frozenset({"CR", "DX", "RG", "DR", "OT", ""})
MIN_SIDE_PX: Final = 256
MAX_SIDE_PX: Final = 8192
MAX_ASPECT: Final = 4.0
# Pixel spacing outside this range is not a radiograph's (a 43 cm detector at 256..8192 pixels).
SPACING_RANGE_MM: Final = (0.02, 2.0)
# A display table that is a clipped straight line to within this is computed by arithmetic (float32
# rounding of the table itself is 6e-8; a window's ramp differs from the line by less than 1e-6).
LINEAR_RAMP_TOLERANCE: Final = 1e-6
# Shuttered pixels are shown as the collimator's shadow is: white (unexposed detector, bone-bright display).
SHUTTER_DISPLAY: Final = 1.0


_TAG_VIEWS: Final[dict[str, str]] = {
    "AP": "ap",
    "PA": "ap",
    "LL": "lateral",
    "RL": "lateral",
    "LAT": "lateral",
    "LATERAL": "lateral",
    "LPO": "oblique",
    "RPO": "oblique",
    "LAO": "oblique",
    "RAO": "oblique",
    "OBL": "oblique",
    "OBLIQUE": "oblique",
}
# Body Part Examined values under which a lumbar spine may be filed (DICOM CID 4031 terms and the
# free text modalities write); anything else explicitly named is another examination.
LUMBAR_BODY_PARTS: Final = frozenset(
    {
        "",
        "LSPINE",
        "L SPINE",
        "L-SPINE",
        "LUMBAR",
        "LUMBARSPINE",
        "LUMBAR SPINE",
        "SPINE",
        "TLSPINE",
        "LSSPINE",
        "SSPINE",
        "SACRUM",
        "ABDOMEN",
        "PELVIS",
        "BACK",
        "TSPINE LSPINE",
    }
)
_TAG_SIDES: Final = {"LPO": "left", "RAO": "left", "RPO": "right", "LAO": "right"}


def faces_left(patient_orientation: tuple[str, str]) -> bool:
    """A lateral shown with the patient's front on the image's left (Patient Orientation's row
    direction "P"): the model reads it mirrored to the orientation it knows best (front on the right)
    and its masks are mirrored back, so measurements see the image as it is."""
    return patient_orientation[0].upper().startswith("P")


def view_from_tags(view_position: str, view_code: str) -> tuple[str | None, str | None]:
    """The view (and oblique side) the modality recorded: View Position, else the view code's meaning."""
    position = view_position.replace(" ", "")
    if position in _TAG_VIEWS:
        return _TAG_VIEWS[position], _TAG_SIDES.get(position)
    meaning = view_code.lower()
    if "oblique" in meaning:
        side = "left" if "left posterior" in meaning or "right anterior" in meaning else None
        side = "right" if "right posterior" in meaning or "left anterior" in meaning else side
        return "oblique", side
    if "lateral" in meaning:
        return "lateral", None
    if "antero-posterior" in meaning or "postero-anterior" in meaning:
        return "ap", None
    return None, None


class Rejection(Exception):  # noqa: N818 - an outcome the appliance reports, not a fault
    """An input the appliance will not judge. `reason` is a stable code (a metric label), the message
    is for people, in our words (never a library's: "Use force=True" means nothing to a radiographer);
    `detail` keeps the library's own text for the log."""

    def __init__(self, reason: str, message: str, sop_instance_uid: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.sop_instance_uid = sop_instance_uid  # where the file names its image
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


# What a rejection says, in our words, whatever the library said.
NOT_DICOM: Final = "not a DICOM file (no DICM preamble)"
UNPARSABLE: Final = "not a readable DICOM file: truncated or damaged"


def undecodable(syntax: str, compressed: bool = True) -> str:
    if not compressed:
        return f"pixel data ({syntax}) could not be read: damaged or cut short"
    return f"pixel data ({syntax}) could not be decoded: damaged, or a compression this appliance cannot read"


# Enough of a file to hold its Part 10 meta information.
META_HEAD_BYTES: Final = 1 << 16


def read_file_meta(stream: BinaryIO) -> FileMetaDataset:
    """A Part 10 file's preamble and meta information, and no further: the stream is left where the
    data set begins (which may be deflated)."""
    read_preamble(stream, False)
    return _read_file_meta_info(stream)


def part10_meta(source: bytes | Path | str) -> tuple[str, str]:
    """The transfer syntax and the SOP Instance UID that a Part 10 file's meta information names,
    from its first bytes, without reading (or inflating) the data set; ("", "") when it has none.
    What is done with a dataset depends on the first, and a verdict on an unreadable one can still
    name its image by the second. A file that cannot be opened raises OSError."""
    if isinstance(source, bytes):
        head = source[:META_HEAD_BYTES]
    else:
        with open(source, "rb") as f:
            head = f.read(META_HEAD_BYTES)
    try:
        meta = read_file_meta(io.BytesIO(head))
    except Exception:  # not Part 10, a truncated head, a broken meta: the full read reports it
        return "", ""
    return str(meta.get("TransferSyntaxUID", "")), str(meta.get("MediaStorageSOPInstanceUID", ""))


def read_dataset(source: bytes | Path | str) -> Dataset:
    """Parse a DICOM file or byte string; a file that is not DICOM is a `Rejection`."""
    try:
        if isinstance(source, bytes):
            return pydicom.dcmread(io.BytesIO(source), force=False)
        return pydicom.dcmread(str(source), force=False)
    except InvalidDicomError as exc:
        raise Rejection("not_dicom", NOT_DICOM, detail=str(exc)) from exc
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        raise Rejection("unreadable", UNPARSABLE, detail=str(exc)) from exc


def accession_number(entry: Path) -> str:
    """A received file's Accession Number (0008,0050), read without its pixel data; "" when absent or
    unreadable, and for a deflated data set (inflating is the decode sandbox's job, never this
    process's). Asked only where a site shows it on the room display; it never goes into a verdict."""
    try:
        if part10_meta(entry)[0] == DeflatedExplicitVRLittleEndian:
            return ""
        ds = pydicom.dcmread(str(entry), stop_before_pixels=True, specific_tags=["AccessionNumber"])
    except Exception:  # whatever the file holds, the display goes without it
        return ""
    return str(ds.get("AccessionNumber", "") or "").strip()


def _number(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def exposure_tags(ds: Dataset) -> ExposureTags:
    """IEC 62494-1 indices as the modality recorded them."""
    return ExposureTags(
        exposure_index=_number(ds, "ExposureIndex"),
        target_exposure_index=_number(ds, "TargetExposureIndex"),
        deviation_index=_number(ds, "DeviationIndex"),
    )


_DATE: Final = re.compile(r"^(\d{4})(\d{2})?(\d{2})?$")
_TIME: Final = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_OFFSET: Final = re.compile(r"^([+-])(\d{2})(\d{2})$")


def _text(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # a value pydicom cannot convert: as good as absent
        return ""


def iso_datetime(date: str, time: str = "", offset: str = "") -> str | None:
    """DICOM DA (+ TM, + a DT's UTC offset) as ISO 8601, as precise as recorded ("2024-03-05T09:07:02.5",
    "2024-03-05", "2024-03"); None when it is not a valid date or time. No time zone is assumed: the
    modality's local time stays its local time."""
    found = _DATE.match(date)
    if found is None:
        return None
    year, month, day = found.groups()
    try:
        _dt.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    text = "-".join(part for part in (year, month, day) if part)
    clock = _TIME.match(time.replace(":", "")) if time and day else None
    if time and day and clock is None:
        return None
    if clock is not None:
        hour, minute, second, fraction = clock.groups()
        if int(hour) > 23 or int(minute or 0) > 59 or int(second or 0) > 60:
            return None
        text += f"T{hour}:{minute or '00'}" + (f":{second}{fraction or ''}" if second else "")
        zone = _OFFSET.match(offset)
        if zone is not None:
            text += f"{zone.group(1)}{zone.group(2)}:{zone.group(3)}"
    return text


def _split_dt(value: str) -> tuple[str, str, str]:
    """A DT value's date (YYYY[MM[DD]]), time and UTC offset ("&ZZXX") parts."""
    offset = ""
    if len(value) >= 5 and value[-5] in "+-":
        value, offset = value[:-5], value[-5:]
    return value[:8], value[8:], offset


def acquisition_datetime(ds: Dataset) -> tuple[str | None, str | None]:
    """When the image was taken, ISO 8601, and the tags it came from: Acquisition DateTime, else
    Acquisition Date (and Time), else Content Date (and Time); (None, None) when none is valid."""
    acquired = _text(ds, "AcquisitionDateTime")
    if acquired:
        found = iso_datetime(*_split_dt(acquired))
        if found is not None:
            return found, "AcquisitionDateTime"
    for prefix in ("Acquisition", "Content"):
        date = _text(ds, f"{prefix}Date")
        if date:
            found = iso_datetime(date, _text(ds, f"{prefix}Time"))
            if found is not None:
                return found, f"{prefix}Date/{prefix}Time"
    return None, None


def exposure_mas(ds: Dataset) -> tuple[float | None, str | None]:
    """The tube current-time product in mAs and the tag it came from: Exposure in uAs (the most precise),
    else Exposure in mAs, else Exposure (an integer of mAs, IS); (None, None) when none is recorded."""
    for keyword, scale in (("ExposureInuAs", 1e-3), ("ExposureInmAs", 1.0), ("Exposure", 1.0)):
        value = _number(ds, keyword)
        if value is not None and value >= 0 and np.isfinite(value):
            return value * scale, keyword
    return None, None


def acquisition_tags(ds: Dataset) -> AcquisitionTags:
    """When, where and with what technique, as recorded: never a patient's name, ID or birth date."""
    when, when_source = acquisition_datetime(ds)
    mas, mas_source = exposure_mas(ds)
    kvp = _number(ds, "KVP")
    return AcquisitionTags(
        datetime=when,
        datetime_source=when_source,
        station_name=_text(ds, "StationName") or None,
        kvp=kvp if kvp is not None and kvp > 0 and np.isfinite(kvp) else None,
        exposure_mas=mas,
        exposure_source=mas_source,
    )


@dataclass(frozen=True)
class Header:
    """What a header says without its pixels: enough for a verdict on an image that was not judged."""

    acquisition: AcquisitionTags
    exposure: ExposureTags
    view: str | None  # "ap", "lateral" or "oblique" as the tags say; None: not said


def header_of(ds: Dataset) -> Header:
    view, _ = view_from_tags(_text(ds, "ViewPosition").upper(), _view_code(ds))
    return Header(acquisition_tags(ds), exposure_tags(ds), view)


def read_header(source: bytes | Path | str | Dataset) -> Header | None:
    """The header of a file that may not decode (a rejected or quarantined image), read without its
    pixel data; None when it cannot be read, and for a deflated data set (inflating is the decode
    sandbox's job, never this process's)."""
    if isinstance(source, Dataset):
        return header_of(source)
    try:
        if part10_meta(source)[0] == DeflatedExplicitVRLittleEndian:
            return None
        stream = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        return header_of(pydicom.dcmread(stream, stop_before_pixels=True))
    except Exception:  # whatever the file holds, the verdict goes without it
        return None


def _pair(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    value = ds.get(keyword)
    try:
        if value is None or len(value) != 2:
            return None
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    lo, hi = SPACING_RANGE_MM
    return (row, col) if lo <= row <= hi and lo <= col <= hi else None


def spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """Pixel spacing in the patient plane where the modality calibrated it, else the detector pitch
    (corrected by the estimated magnification when recorded), else unknown. Zero or absurd values
    count as absent: some CR readers write 0\\0. A Pixel Spacing that only repeats the Imager Pixel
    Spacing is the detector pitch."""
    calibrated = _pair(ds, "PixelSpacing")
    imager = _pair(ds, "ImagerPixelSpacing")
    # Pixel Spacing equal to Imager Pixel Spacing, with no calibration said to be done, is the
    # detector's pitch copied over (PS3.3 C.8.11.7.1.1): millimetres at the detector, not the spine
    copied = (
        calibrated is not None
        and imager is not None
        and np.allclose(calibrated, imager, rtol=1e-6, atol=1e-9)
        and not str(ds.get("PixelSpacingCalibrationType", "")).strip()
    )
    if calibrated is not None and not copied:
        return calibrated, "PixelSpacing"
    if imager is not None:
        magnification = _number(ds, "EstimatedRadiographicMagnificationFactor")
        if magnification is not None and 1.0 <= magnification <= 3.0:
            return (imager[0] / magnification, imager[1] / magnification), "ImagerPixelSpacing/magnification"
        return imager, "ImagerPixelSpacing"
    return None, "unknown"


def to_detector(ds: Dataset, source: str) -> float | None:
    """Millimetres at the detector per millimetre of the spacing `spacing` chose: 1 for the detector's
    pitch, the magnification for a spacing corrected by it, Imager over Pixel Spacing for a calibrated
    one (when the detector's pitch is recorded), else unknown."""
    if source == "ImagerPixelSpacing":
        return 1.0
    imager = _pair(ds, "ImagerPixelSpacing")
    if source == "ImagerPixelSpacing/magnification":
        return _number(ds, "EstimatedRadiographicMagnificationFactor")
    calibrated = _pair(ds, "PixelSpacing")
    if source == "PixelSpacing" and imager is not None and calibrated is not None:
        ratio = imager[0] / calibrated[0]
        return ratio if 1.0 <= ratio <= 3.0 else None
    return None


def check_header(ds: Dataset) -> None:
    """Refuse what is not a single-frame greyscale projection radiograph, before touching pixels."""
    modality = str(ds.get("Modality", "")).upper()
    if modality not in PROJECTION_MODALITIES:
        raise Rejection("not_projection_radiograph", f"modality {modality} is not a projection radiograph (CR/DX)")
    if "PixelData" not in ds:
        kind = "float pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no pixel data"
        raise Rejection("no_pixel_data", f"the dataset carries {kind}; a radiograph needs integer Pixel Data")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Rejection(
            "not_greyscale", f"{photometric or 'unknown'} with {samples} samples per pixel is not greyscale"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise Rejection("multi_frame", f"{frames} frames: a radiograph is a single frame")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not (MIN_SIDE_PX <= rows <= MAX_SIDE_PX and MIN_SIDE_PX <= cols <= MAX_SIDE_PX):
        raise Rejection("absurd_size", f"{rows} x {cols} pixels is outside {MIN_SIDE_PX}..{MAX_SIDE_PX} per side")
    if max(rows, cols) / min(rows, cols) > MAX_ASPECT:
        raise Rejection("absurd_size", f"{rows} x {cols} pixels: aspect ratio above {MAX_ASPECT:g}")
    bits_allocated, bits_stored = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise Rejection("unsupported_bit_depth", f"{bits_stored} of {bits_allocated} allocated bits is not 8..16 bit")


def _stored_pixels(ds: Dataset) -> tuple[NDArray[np.integer], tuple[int, int]]:
    """The stored values, read-only (uncompressed pixel data is a view on the received bytes, not a
    copy), and their min and max."""
    try:
        ds.pixel_array_options(view_only=True, correct_unused_bits=False)  # the bits are checked below
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing plugins and corrupt streams
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        compressed = bool(getattr(syntax, "is_compressed", True))
        raise Rejection("undecodable", undecodable(name, compressed), detail=str(exc)) from exc
    if arr.ndim != 2:
        raise Rejection("not_greyscale", f"decoded pixel array has shape {arr.shape}, expected rows x columns")
    return _within_bits_stored(arr, int(ds.get("BitsStored", 16)))


def _stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """The values `bits_stored` bits can hold: the detector's limits."""
    if signed:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1


def _within_bits_stored(
    arr: NDArray[np.integer], bits_stored: int
) -> tuple[NDArray[np.integer], tuple[int, int]]:
    """Values with the bits above Bits Stored cleared (unsigned) or sign-extended (signed), as PS3.5
    8.1.1 asks: those bits may carry anything, overlays in old files. When they are already clean,
    which a min/max shows, the view is kept: no copy and no two shifts over millions of pixels. With
    the values' min and max (which the rest of decoding needs too)."""
    value_range = (int(arr.min()), int(arr.max()))
    allocated = arr.dtype.itemsize * 8
    lo, hi = _stored_range(min(bits_stored, allocated), arr.dtype.kind == "i")
    if bits_stored >= allocated or (value_range[0] >= lo and value_range[1] <= hi):
        return arr, value_range
    corrected = arr.copy()
    shift = allocated - bits_stored
    np.left_shift(corrected, shift, out=corrected)
    np.right_shift(corrected, shift, out=corrected)
    return corrected, (int(corrected.min()), int(corrected.max()))


def _padding_value(ds: Dataset) -> int | None:
    """Pixel Padding Value, or None when the dataset has none (absent or empty). In an implicit-VR file
    pydicom cannot tell US from SS and leaves the raw bytes: Pixel Representation says which."""
    value = ds.get("PixelPaddingValue")
    if value is None or value == b"":
        return None
    if isinstance(value, bytes):
        if len(value) != 2:
            raise Rejection("unreadable", f"Pixel Padding Value of {len(value)} bytes: a 16-bit value expected")
        return int.from_bytes(value, "little", signed=int(ds.get("PixelRepresentation", 0)) == 1)
    return int(value)


def _padding(ds: Dataset, stored: NDArray[np.integer], value_range: tuple[int, int]) -> Bool | None:
    """Pixels the modality marked as padding: Pixel Padding Value, up to the Range Limit if given;
    None when it marks none. `value_range` is the stored values' min and max."""
    value = _padding_value(ds)
    if value is None:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    lo, hi = sorted((value, value if limit is None else int(limit)))
    if lo > value_range[1] or hi < value_range[0]:
        return None
    padding = np.asarray(stored == lo) if lo == hi else np.asarray((stored >= lo) & (stored <= hi))
    return padding if padding.any() else None


def _display_table(ds: Dataset, lo_value: int, hi_value: int, used: tuple[int, int]) -> F32:
    """Display value for every stored value in lo..hi: one lookup table instead of float maths over
    millions of pixels (a 2,500 x 2,500 image decodes in tens of milliseconds). `used` is the range
    of stored values that are image (padding excluded): without a window, it spans the display."""
    levels = np.arange(lo_value, hi_value + 1, dtype=np.int64)
    values = np.asarray(apply_modality_lut(levels, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
    if has_voi and "VOILUTSequence" not in ds:
        # a window maps onto the output range 0 .. 2^bits - 1 (pydicom's convention): keep it absolute
        lo, hi = 0.0, float(2 ** int(ds.get("BitsStored", 16)) - 1)
    else:
        ends = values[[used[0] - lo_value, used[1] - lo_value]]
        lo, hi = float(ends.min()), float(ends.max())
    table = np.clip((values - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    if _inverted(ds):
        table = 1.0 - table
    return table.astype(np.float32)


def _linear_ramp(table: F32) -> tuple[int, float] | None:
    """(first unclipped index, slope) when the display table is a straight ramp clipped to 0..1, the
    shape of a linear window on a linear Modality LUT (what nearly every DX and CR image carries):
    the image is then computed by arithmetic, four times faster than a gather over millions of pixels.
    The ramp is read off the table itself and checked against every entry, so a sigmoid window or a
    VOI LUT keeps the table."""
    inside = np.flatnonzero((table > 0.0) & (table < 1.0))
    if len(inside) < 2:
        return None
    start, end = int(inside[0]), int(inside[-1])
    slope = (float(table[end]) - float(table[start])) / (end - start)
    ramp = np.clip(float(table[start]) + (np.arange(len(table)) - start) * slope, 0.0, 1.0)
    return (start, slope) if float(np.abs(ramp - table).max()) <= LINEAR_RAMP_TOLERANCE else None


def _inverted(ds: Dataset) -> bool:
    """MONOCHROME1 displays inverted; so does MONOCHROME2 with an INVERSE Presentation LUT Shape.
    (MONOCHROME1 with INVERSE is the same single inversion the standard asks for, not a double one.)"""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    shape = str(ds.get("PresentationLUTShape", "")).upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def display_pixels(
    ds: Dataset, stored: NDArray[np.generic] | None = None, value_range: tuple[int, int] | None = None
) -> F32:
    """Stored pixel values -> display values in [0, 1] (Modality LUT, VOI LUT/window, Presentation LUT).
    `value_range`: the stored values' min and max, when the caller has them already."""
    arr = np.asarray(ds.pixel_array if stored is None else stored)
    if arr.dtype.kind not in "iu":
        arr = np.rint(arr).astype(np.int64)
        value_range = None
    lo_value, hi_value = value_range or (int(arr.min()), int(arr.max()))
    padding = _padding(ds, arr, (lo_value, hi_value))
    used = (lo_value, hi_value)
    if padding is not None and not padding.all():
        image = arr[~padding]
        used = (int(image.min()), int(image.max()))
    first = 0 if arr.dtype.kind == "u" else lo_value  # unsigned: the table starts at 0, no shifted copy
    table = _display_table(ds, first, hi_value, used)
    ramp = _linear_ramp(table)
    if ramp is not None:  # a linear window: arithmetic passes instead of a gather
        start, slope = ramp
        out: F32 = np.empty(arr.shape, dtype=np.float32)
        np.subtract(arr, np.float32(first + start), out=out, dtype=np.float32)  # exact: integers below 2^24
        out *= np.float32(slope)
        out += table[start]
        np.clip(out, 0.0, 1.0, out=out)
    elif arr.dtype.kind == "u":  # index the table with the stored values themselves: no 64-bit copy of the image
        out = table[arr]
    else:
        out = table[arr.astype(np.int64) - lo_value]
    if padding is not None:
        out[padding] = 0.0  # padding shows as background, never as anatomy
    return out


def _square(image: F32, spacing_mm: tuple[float, float]) -> tuple[F32, tuple[float, float]]:
    """Resample non-square pixels onto the finer of the two spacings (the preprocessing's own area
    resampling), so that angles and distances measured on the network's masks are true."""
    row_mm, col_mm = spacing_mm
    target = min(row_mm, col_mm)
    rows, cols = image.shape
    new_rows, new_cols = round(rows * row_mm / target), round(cols * col_mm / target)
    if new_rows != rows:
        image = area_average(image, new_rows, axis=0)
    if new_cols != cols:
        image = area_average(image, new_cols, axis=1)
    return image.astype(np.float32), (target, target)


def _view_code(ds: Dataset) -> str:
    seq = ds.get("ViewCodeSequence")
    if not seq:
        return ""
    return str(seq[0].get("CodeMeaning", ""))


def decode(ds: Dataset) -> Radiograph:
    """A parsed dataset -> `Radiograph`; raises `Rejection` for anything that is not one."""
    check_header(ds)
    stored, value_range = _stored_pixels(ds)  # the min and max found once, shared by the steps below
    pixels = display_pixels(ds, stored, value_range)
    shutter = find_shutter(ds, stored, value_range, _padding_value(ds))
    if shutter is not None:
        shutter.paint(pixels, SHUTTER_DISPLAY)
    pixel_spacing, source = spacing(ds)
    resampled = False
    if pixel_spacing is not None and abs(pixel_spacing[0] / pixel_spacing[1] - 1.0) > 0.01:
        pixels, pixel_spacing = _square(pixels, pixel_spacing)
        resampled = True
    orientation = ds.get("PatientOrientation") or ["", ""]
    orientation = (str(orientation[0]), str(orientation[1])) if len(orientation) == 2 else ("", "")
    view_position = str(ds.get("ViewPosition", "")).upper()
    tag_view, tag_side = view_from_tags(view_position, _view_code(ds))
    body_part = str(ds.get("BodyPartExamined", "")).upper().strip()
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")
    return Radiograph(
        pixels=pixels,
        pixel_spacing_mm=pixel_spacing,
        spacing_source=source,
        to_detector=to_detector(ds, source),
        stored=stored,
        stored_range=_stored_range(int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0)) == 1),
        view_position=view_position,
        view_from_tags=tag_view,
        oblique_side_from_tags=tag_side,
        faces_left=faces_left(orientation),
        modality=str(ds.get("Modality", "")),
        body_part=body_part,
        lumbar_examination=body_part in LUMBAR_BODY_PARTS,
        photometric=str(ds.get("PhotometricInterpretation", "")),
        exposure=exposure_tags(ds),
        transfer_syntax=str(getattr(syntax, "name", syntax)),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        resampled_to_square=resampled,
        shutter=shutter,
        acquisition=acquisition_tags(ds),
    )


def decode_file(source: bytes | Path | str) -> Radiograph:
    return decode(read_dataset(source))
