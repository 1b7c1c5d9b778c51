"""Decoding: orientation, formats, reduced decode, and the refusals."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from cv.decode import decode_photo, orient_boxes, read_header, reduction_factor
from cv.errors import (
    EmptyPhotoError,
    NotAPhotoError,
    PhotoError,
    PhotoTooLargeError,
    TruncatedPhotoError,
)

UPRIGHT_W, UPRIGHT_H = 800, 600
RED_BOX = (100, 60, 300, 200)  # x0, y0, x1, y1 in upright pixels
# PIL transpose that turns the upright image into what a camera with this orientation stores.
TO_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_scene() -> Image.Image:
    rng = np.random.default_rng(1)
    arr = np.full((UPRIGHT_H, UPRIGHT_W, 3), 200, np.uint8)
    arr += rng.integers(0, 20, arr.shape, dtype=np.uint8)
    x0, y0, x1, y1 = RED_BOX
    arr[y0:y1, x0:x1] = (220, 20, 20)
    return Image.fromarray(arr)


def jpeg_with_orientation(orientation: int) -> bytes:
    img = upright_scene()
    if TO_STORED[orientation] is not None:
        img = img.transpose(TO_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def red_bbox(rgb: np.ndarray) -> tuple[int, int, int, int]:
    mask = (rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("min_side", [None, 150])
def test_every_exif_orientation_comes_out_upright_with_the_box_in_place(orientation, min_side):
    data = jpeg_with_orientation(orientation)
    photo = decode_photo(data, min_side=min_side, name=f"o{orientation}.jpg")
    assert photo.orientation == orientation
    assert (photo.original_width, photo.original_height) == (UPRIGHT_W, UPRIGHT_H)
    expected_scale = 1.0 if min_side is None else 0.25
    assert photo.scale == pytest.approx(expected_scale)
    assert photo.rgb.shape == (round(UPRIGHT_H * expected_scale), round(UPRIGHT_W * expected_scale), 3)
    found = np.array(red_bbox(photo.rgb)) / photo.scale
    assert np.abs(found - np.array(RED_BOX)).max() <= 2 / photo.scale + 1
    if min_side is None:
        # Independent reference: PIL's own EXIF transpose of the same file.
        reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert np.abs(reference.astype(int) - photo.rgb.astype(int)).mean() < 2.0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_in_png_and_webp(fmt, orientation):
    img = upright_scene().transpose(TO_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
    photo = decode_photo(buf.getvalue(), min_side=300)
    assert photo.orientation == orientation and photo.rgb.shape == (300, 400, 3)
    found = np.array(red_bbox(photo.rgb)) / photo.scale
    assert np.abs(found - np.array(RED_BOX)).max() <= 4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_boxes_maps_stored_boxes_to_upright(orientation):
    img = upright_scene()
    if TO_STORED[orientation] is not None:
        img = img.transpose(TO_STORED[orientation])
    stored = np.asarray(img)
    box = orient_boxes(np.array([red_bbox(stored)]), orientation, stored.shape[1], stored.shape[0])
    np.testing.assert_allclose(box[0], RED_BOX, atol=1)


def test_reduced_jpeg_decode_matches_a_full_decode_shrunk():
    rng = np.random.default_rng(3)
    arr = cv2.GaussianBlur(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8), (0, 0), 4)
    data = cv2.imencode(".jpg", arr)[1].tobytes()
    full = decode_photo(data)
    quarter = decode_photo(data, min_side=300)
    eighth = decode_photo(data, min_long_side=200)
    assert quarter.rgb.shape == (300, 400, 3) and quarter.scale == 0.25
    assert eighth.rgb.shape == (150, 200, 3)
    shrunk = cv2.resize(full.rgb, (400, 300), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - quarter.rgb.astype(int)).mean() < 3.0
    # RGB order, not BGR.
    assert np.abs(full.rgb.astype(int) - arr[..., ::-1].astype(int)).mean() < 3.0


def test_reduction_factor_keeps_the_requested_sides():
    assert reduction_factor(4000, 3000, None) == 1
    assert reduction_factor(4000, 3000, 384) == 4
    assert reduction_factor(4000, 3000, 375) == 8
    assert reduction_factor(4000, 3000, 2000) == 1
    assert reduction_factor(4000, 3000, None, min_long_side=512) == 4
    assert reduction_factor(4000, 3000, 300, min_long_side=1280) == 2


def _encode_pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


COLOUR = (200, 30, 40)


@pytest.mark.parametrize(
    "fmt",
    ["png8", "png16", "webp", "heic", "gray_jpeg", "cmyk_jpeg", "png_rgba", "bmp"],
)
def test_formats_all_come_out_rgb(fmt):
    img = Image.new("RGB", (64, 48), COLOUR)
    if fmt == "png8":
        data = _encode_pil(img, "PNG")
    elif fmt == "png16":
        arr16 = np.zeros((48, 64, 3), np.uint16)
        arr16[:] = np.array(COLOUR[::-1], np.uint16) * 257  # cv2 writes BGR
        data = cv2.imencode(".png", arr16)[1].tobytes()
    elif fmt == "webp":
        data = _encode_pil(img, "WEBP", lossless=True)
    elif fmt == "heic":
        data = _encode_pil(img, "HEIF", quality=95)
    elif fmt == "gray_jpeg":
        data = _encode_pil(img.convert("L"), "JPEG", quality=95)
    elif fmt == "cmyk_jpeg":
        data = _encode_pil(img.convert("CMYK"), "JPEG", quality=95)
    elif fmt == "png_rgba":
        data = _encode_pil(img.convert("RGBA"), "PNG")
    else:
        data = _encode_pil(img, "BMP")
    photo = decode_photo(data, name=f"x.{fmt}")
    assert photo.rgb.shape == (48, 64, 3) and photo.rgb.dtype == np.uint8
    expected = np.array(COLOUR) if fmt != "gray_jpeg" else np.full(3, np.asarray(img.convert("L"))[0, 0])
    tolerance = 12 if fmt in ("heic", "cmyk_jpeg", "gray_jpeg") else 2
    assert np.abs(photo.rgb[24, 32].astype(int) - expected).max() <= tolerance


def test_path_input_records_the_name(tmp_path: Path):
    path = tmp_path / "IMG_0001.jpg"
    path.write_bytes(jpeg_with_orientation(6))
    photo = decode_photo(path)
    assert photo.name == str(path)
    assert photo.rgb.shape[:2] == (UPRIGHT_H, UPRIGHT_W)


def test_zero_byte_file_is_refused(tmp_path: Path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(EmptyPhotoError, match=r"empty\.jpg.*0 bytes.*upload it again"):
        decode_photo(path)


def test_truncated_jpeg_is_refused(tmp_path: Path):
    data = jpeg_with_orientation(1)
    for cut in (len(data) // 2, len(data) - 2):
        path = tmp_path / "cut.jpg"
        path.write_bytes(data[:cut])
        with pytest.raises(TruncatedPhotoError, match=r"cut\.jpg.*truncated.*upload it again"):
            decode_photo(path)


def test_pdf_named_jpg_is_refused(tmp_path: Path):
    path = tmp_path / "report.jpg"
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n")
    with pytest.raises(NotAPhotoError, match=r"report\.jpg.*not an image.*PDF"):
        decode_photo(path)


def test_missing_file_names_the_path(tmp_path: Path):
    with pytest.raises(PhotoError, match="no such file"):
        decode_photo(tmp_path / "nope.jpg")


def _huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of the given size, built row by row (the file is small)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_30000_square_png_is_refused_without_allocating_it(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_huge_png(30000, 30000))
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(PhotoTooLargeError, match=r"bomb\.png.*900000000 pixels.*not a stitched panorama"):
            decode_photo(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000  # the file is read (~1 MB); the 900 MP image never is


def test_pixel_limit_is_configurable(tmp_path: Path):
    path = tmp_path / "big.png"
    path.write_bytes(_huge_png(5000, 4000))
    with pytest.raises(PhotoTooLargeError, match=r"big\.png.*5000x4000 = 20,000,000 pixels.*max_pixels"):
        decode_photo(path, max_pixels=12_000_000)
    assert decode_photo(path, max_pixels=30_000_000, min_side=500).rgb.shape == (500, 625, 3)


def test_header_only_read_is_cheap_and_reports_orientation():
    header = read_header(jpeg_with_orientation(6))
    assert header.format == "JPEG"
    assert (header.stored_width, header.stored_height) == (UPRIGHT_H, UPRIGHT_W)
    assert header.upright_size == (UPRIGHT_W, UPRIGHT_H)
    assert header.orientation == 6
