"""Bounded reading and decoding of untrusted image bytes (files of a catalogue, parts of a request)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from igr_sdk._errors import InputError

MAX_FILE_BYTES = 64 * 1024 * 1024  # one encoded image; far above any photo at the model's resolutions
MAX_PIXELS = 50_000_000  # the runtime's own limit, checked from the header before decoding


class TooLargeError(InputError):
    """An input is over a size or pixel limit (HTTP 413 in the service)."""


def read_bounded(path: str | os.PathLike, what: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a file of at most ``max_bytes``; InputError naming the file otherwise."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise InputError(f"{what}: {str(p)!r} is not a file, expected an image file")
        if size > max_bytes:
            raise TooLargeError(f"{what}: {str(p)!r} is {size} bytes, over the limit of {max_bytes} bytes")
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"{what}: file {str(p)!r} does not exist") from None
    except OSError as e:
        raise InputError(f"{what}: {str(p)!r} cannot be read ({e.strerror or e})") from None
    if len(data) > max_bytes:  # grew while being read
        raise TooLargeError(f"{what}: {str(p)!r} is over the limit of {max_bytes} bytes")
    return data


def decode(data: bytes, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes, checking the pixel count from the header before any pixel is decoded."""
    if not data:
        raise InputError(f"{what}: empty data, expected an encoded image (PNG, JPEG, WebP, ...)")
    try:
        with warnings.catch_warnings():  # the size is checked below, against a limit of our own
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise TooLargeError(f"{what}: {e}") from None
    except UnidentifiedImageError:
        raise InputError(f"{what}: not a readable image (no image format Pillow knows)") from None
    except Exception as e:  # Pillow's format plugins raise many types for malformed headers
        raise InputError(f"{what}: not a readable image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise TooLargeError(f"{what}: {w}x{h} pixels is over the limit of {max_pixels} pixels")
    try:
        img.load()
    except Exception as e:  # truncated or corrupt pixel data
        raise InputError(f"{what}: the image could not be decoded ({type(e).__name__}: {e})") from None
    return img


def label_mask(img: Image.Image, labels: Iterable[int], what: str) -> np.ndarray:
    """A parse / label map (one id per pixel) -> (H, W) bool of the pixels whose id is in ``labels``."""
    if img.mode not in ("P", "L", "I", "I;16"):
        raise InputError(f"{what}: label map of PIL mode {img.mode!r}; expected one label id per pixel (mode P or L)")
    return np.isin(np.asarray(img), np.asarray(sorted(labels)))
