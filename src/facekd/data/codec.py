"""Encode and decode face images: JPEG through libjpeg-turbo, anything else through OpenCV.

The decoder is chosen from the leading magic bytes, so a corrupt JPEG is reported
as a corrupt JPEG instead of being retried silently by a second library.
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

from facekd.errors import DataError

JPEG_MAGIC = b"\xff\xd8\xff"
# A 50-megapixel photo decodes to 150 MB; a corrupt header asking for more is refused before decoding.
MAX_IMAGE_PIXELS = 50_000_000


def decode_image(data: bytes | memoryview, source: str) -> np.ndarray:
    """Decode encoded image bytes to a uint8 HxWx3 RGB array.

    `source` names where the bytes came from (file and record) for the error message.
    """
    data = bytes(data)
    if not data:
        raise DataError(f"{source}: empty image payload, expected encoded image bytes")
    if data.startswith(JPEG_MAGIC):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            if height * width > MAX_IMAGE_PIXELS:
                raise DataError(f"{source}: JPEG header declares {width}x{height} pixels ({len(data)} bytes), "
                                f"expected at most {MAX_IMAGE_PIXELS:,} pixels (a corrupt header?)")
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError as exc:
            raise DataError(f"{source}: corrupt JPEG ({len(data)} bytes): {exc}") from None
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(
            f"{source}: undecodable image ({len(data)} bytes starting {data[:4].hex()}), "
            "expected JPEG, PNG or another format OpenCV reads"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 HxWx3 RGB array as JPEG the way insightface does (cv2.imencode)."""
    check_rgb_image(image, "image to encode")
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise DataError(f"image to encode: OpenCV failed to JPEG-encode an array of shape {image.shape}")
    return encoded.tobytes()


def check_rgb_image(image: np.ndarray, what: str) -> None:
    """Raise DataError unless `image` is a uint8 HxWx3 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        found = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise DataError(f"{what}: found {found.strip()}, expected a uint8 HxWx3 RGB array")
