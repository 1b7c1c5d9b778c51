"""Decode an inspection photo from bytes or a path into an upright RGB array.

The header is read first (PIL's lazy open: size, format and EXIF without decoding pixels), so
empty files, non-images and decompression bombs are refused before anything large is allocated.
JPEGs are then decoded by OpenCV at the smallest libjpeg DCT scale (1/2, 1/4, 1/8) that still
gives the consumer the pixels it asked for, which is several times cheaper than a full decode
plus resize. EXIF orientation is always applied here, explicitly (OpenCV is told to ignore it),
so the same rotation code runs whatever the decode path.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cv.errors import EmptyPhotoError, NotAPhotoError, PhotoError, PhotoTooLargeError, TruncatedPhotoError

try:  # HEIC/HEIF from iPhones; registered once, on import.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pillow_heif = None

DEFAULT_MAX_PIXELS = 120_000_000  # 120 MP: larger than any phone or inspection camera photo.

# Formats OpenCV decodes itself (fast path, and DCT-scaled for JPEG); anything else PIL opens is
# decoded by PIL (HEIC, TIFF, BMP, GIF ...).
_CV2_FORMATS = {"JPEG", "PNG", "WEBP"}
_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# IMREAD_REDUCED_COLOR_* include the BGR bit, which cannot be combined with IMREAD_COLOR_RGB; the
# GRAYSCALE_* variants carry only the scale, and IMREAD_COLOR_RGB adds 3-channel RGB output.
_BASE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass
class Photo:
    """A decoded, upright photo and where it came from.

    ``scale`` is decoded pixels per original pixel (1.0 for a full decode, 0.25 for a 1/4 decode);
    a box found on ``rgb`` maps to the original photo by dividing by ``scale``.
    """

    rgb: np.ndarray
    name: str
    original_width: int
    original_height: int
    orientation: int = 1
    scale: float = 1.0
    format: str = ""

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


@dataclass(frozen=True)
class PhotoHeader:
    """What the header says, before any pixel is decoded (sizes as stored, before orientation)."""

    format: str
    stored_width: int
    stored_height: int
    orientation: int

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) after the EXIF orientation is applied."""
        if self.orientation in (5, 6, 7, 8):
            return self.stored_height, self.stored_width
        return self.stored_width, self.stored_height


def _read_source(source: bytes | bytearray | memoryview | str | Path, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), name or "<bytes>"
    path = Path(source)
    label = name or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PhotoError(f"{label}: no such file - check the path") from None
    except IsADirectoryError:
        raise PhotoError(f"{label}: is a folder, not a photo - pass the photo files inside it") from None
    return data, label


def read_header(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> PhotoHeader:
    """Parse the image header without decoding pixels; refuse empty, non-image and oversized files."""
    if not data:
        raise EmptyPhotoError(f"{name}: file is empty (0 bytes) - the upload did not finish; upload it again")
    try:
        with warnings.catch_warnings():
            # Between PIL's warning and error sizes the pixel limit below decides, not PIL.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            fmt = (im.format or "").upper()
            width, height = im.size
            orientation = _orientation_of(im)
    except Image.DecompressionBombError as exc:
        raise PhotoTooLargeError(
            f"{name}: image is far larger than the {max_pixels:,}-pixel limit ({exc}) - "
            "send a normal camera photo, not a stitched panorama or scan"
        ) from None
    except UnidentifiedImageError:
        raise NotAPhotoError(
            f"{name}: not an image Loupe can read (starts with {data[:8]!r}) - "
            "upload a JPEG, PNG, WebP or HEIC photo, not a document or a PDF"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise TruncatedPhotoError(
            f"{name}: image header is corrupt ({exc}) - re-export or retake the photo"
        ) from None
    if width * height > max_pixels:
        raise PhotoTooLargeError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the "
            f"{max_pixels:,}-pixel limit - resize it, or raise max_pixels if this is a genuine photo"
        )
    if width <= 0 or height <= 0:
        raise TruncatedPhotoError(f"{name}: header declares an empty {width}x{height} image - re-export it")
    return PhotoHeader(fmt, width, height, orientation)


def _orientation_of(im: Image.Image) -> int:
    # pillow-heif applies the HEIF rotation itself while decoding and resets EXIF to 1.
    if "original_orientation" in im.info:
        return 1
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make a good photo unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def reduction_factor(
    stored_width: int, stored_height: int, min_side: int | None, min_long_side: int | None = None
) -> int:
    """The largest DCT reduction (1, 2, 4 or 8) that keeps the shorter side >= ``min_side`` and the
    longer side >= ``min_long_side``."""
    short, long = min(stored_width, stored_height), max(stored_width, stored_height)
    if min_side is None and min_long_side is None:
        return 1
    for factor in (8, 4, 2):
        if (min_side is None or math.ceil(short / factor) >= min_side) and (
            min_long_side is None or math.ceil(long / factor) >= min_long_side
        ):
            return factor
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image as stored into the upright image its EXIF orientation (1-8) describes."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def orient_boxes(
    boxes_xyxy: np.ndarray, orientation: int, stored_width: int, stored_height: int
) -> np.ndarray:
    """Map boxes drawn on the image as stored (e.g. by a tool that ignored EXIF) to upright pixels."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    w, h = float(stored_width), float(stored_height)
    xs, ys = b[:, [0, 2]], b[:, [1, 3]]
    mapping = {
        1: (xs, ys),
        2: (w - xs, ys),
        3: (w - xs, h - ys),
        4: (xs, h - ys),
        5: (ys, xs),
        6: (h - ys, xs),
        7: (h - ys, w - xs),
        8: (ys, w - xs),
    }
    nx, ny = mapping.get(orientation, (xs, ys))
    return np.stack([nx.min(1), ny.min(1), nx.max(1), ny.max(1)], axis=1)


def decode_photo(
    source: bytes | str | Path,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    min_long_side: int | None = None,
) -> Photo:
    """Decode a photo upright in RGB, at reduced resolution when the consumer needs less.

    ``min_side``: the smallest the shorter side of the decoded image may be; ``min_long_side`` the
    same for the longer side (handy when the aspect ratio is not known yet). The largest reduction
    of 2, 4 or 8 that satisfies both is used; neither given means full resolution.
    Raises a :class:`cv.errors.PhotoError` subclass naming the file for unreadable input.
    """
    data, label = _read_source(source, name)
    header = read_header(data, label, max_pixels)
    factor = reduction_factor(header.stored_width, header.stored_height, min_side, min_long_side)
    stored = None
    if header.format in _CV2_FORMATS:
        flags = _BASE_FLAGS | (_REDUCED_FLAGS[factor] if factor > 1 and header.format == "JPEG" else 0)
        stored = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        orientation = header.orientation
    if stored is None:
        # Not a cv2 format, or cv2 refused it: PIL decodes it, or says why it cannot.
        stored, orientation = _decode_with_pil(data, label)
    if stored.ndim == 2:
        stored = cv2.cvtColor(stored, cv2.COLOR_GRAY2RGB)
    if stored.dtype != np.uint8:  # 16-bit PNG/TIFF decoded by PIL
        stored = (stored / 257.0).round().astype(np.uint8)
    rgb = apply_orientation(stored, orientation)
    orig_w, orig_h = header.upright_size
    if factor > 1 and max(rgb.shape[:2]) > math.ceil(max(orig_w, orig_h) / factor):
        # Only JPEG scales inside the decoder; other formats are shrunk here to the same size.
        size = (math.ceil(orig_w / factor), math.ceil(orig_h / factor))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    scale = rgb.shape[1] / orig_w
    return Photo(
        rgb=np.ascontiguousarray(rgb),
        name=label,
        original_width=orig_w,
        original_height=orig_h,
        orientation=header.orientation,
        scale=scale,
        format=header.format,
    )


def _decode_with_pil(data: bytes, label: str) -> tuple[np.ndarray, int]:
    """Decode with PIL; returns the pixels as stored and the orientation still to apply (1 here,
    because ImageOps.exif_transpose already turned the image upright)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)
            if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(upright, dtype=np.uint32)
                arr = (arr >> 8).clip(0, 255).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
                return arr, 1
            if upright.mode != "RGB":
                upright = upright.convert("RGB")
            return np.asarray(upright), 1
    except (OSError, SyntaxError, ValueError) as exc:
        raise TruncatedPhotoError(
            f"{label}: image data is truncated or corrupt ({exc}) - the upload was cut short; upload it again"
        ) from None
