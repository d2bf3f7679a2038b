"""The HTTP side of the service: bounded multipart parsing, option checks, error statuses (no Ray here)."""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse

from igr_sdk._errors import InputError
from igr_sdk.scale._images import TooLargeError

FIELDS = ("person", "mask", "category", "seed", "steps", "guidance")
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Pixels are checked from the image header, before decoding."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_steps: int = 100
    batch_wait_s: float = 0.05  # how long a batch waits to fill up


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def status_for(error: Exception) -> int:
    """413 for a size or pixel limit, 400 for other bad input, 422 when the inputs drove the model out of range."""
    if isinstance(error, TooLargeError):
        return 413
    if isinstance(error, InputError):
        return 400
    return 422


def error_response(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_form(request: Request, limits: Limits) -> dict[str, bytes | str]:
    """The multipart fields: files as bytes, the others as text; unknown or repeated fields are refused."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPError(415, f"expected a multipart/form-data body, got Content-Type {content_type or 'none'!r}")
    body = await read_body(request, limits.max_body_bytes)

    async def stream() -> AsyncIterator[bytes]:
        yield body
        yield b""

    parser = MultiPartParser(
        request.headers, stream(), max_files=len(FIELDS), max_fields=len(FIELDS), max_part_size=4096
    )
    try:
        form: FormData = await parser.parse()
    except MultiPartException as e:
        raise HTTPError(400, f"malformed multipart body: {e.message}") from None
    fields: dict[str, bytes | str] = {}
    try:
        for name, value in form.multi_items():
            if name not in FIELDS:
                raise HTTPError(400, f"unknown field {name!r}; expected {', '.join(FIELDS)}")
            if name in fields:
                raise HTTPError(400, f"field {name!r} given more than once")
            fields[name] = await value.read() if isinstance(value, UploadFile) else value
    finally:
        await form.close()
    return fields


def text_field(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{name} must be text, got {len(value)} bytes of binary data") from None
    return value.strip() if value is not None and value.strip() else None


def file_field(fields: dict, name: str) -> bytes | None:
    value = fields.get(name)
    if isinstance(value, str):
        raise InputError(f"{name} must be sent as a file part (an encoded image), got a text field")
    return value


def _integer(text: str, lo: int, hi: int, what: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 20 and lo <= int(text) <= hi):
        bounds = "[0, 2**64 - 1]" if hi == MAX_SEED else f"[{lo}, {hi}]"
        raise InputError(f"{what} must be an integer in {bounds}, got {text!r}")
    return int(text)


def parse_options(fields: dict, defaults: dict, limits: Limits) -> tuple[str, int, int, float]:
    """category, seed, steps and guidance from the form, checked; a missing seed is drawn here."""
    category = text_field(fields, "category") or defaults["category"]
    seed_text, steps_text, guidance_text = (text_field(fields, k) for k in ("seed", "steps", "guidance"))
    seed = secrets.randbits(63) if seed_text is None else _integer(seed_text, 0, MAX_SEED, "seed")
    steps = defaults["steps"] if steps_text is None else _integer(steps_text, 1, limits.max_steps, "steps")
    guidance = defaults["guidance"]
    if guidance_text is not None:
        try:
            guidance = float(guidance_text)
        except ValueError:
            guidance = math.nan
        if not math.isfinite(guidance):
            raise InputError(f"guidance must be a finite number, got {guidance_text!r}")
    return category, seed, steps, guidance
