"""Output files of the command line: planned and checked before any inference, written atomically.

A plan refuses, before the engines are even loaded: an output path that is an existing directory,
a folder that is a file, a place the process cannot write, a file name that would leave the output
folder, and any output that is one of the inputs. Each image is written to a temporary file in its
folder and renamed over the target, so an interrupted write never leaves a truncated image.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from igr_sdk._errors import InputError

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def is_image_path(path: Path) -> bool:
    """Whether ``path`` names an image file (an output format we write), not a folder.

    An image suffix Pillow knows but that is not written here (``.gif``, ``.bmp``, ...) is refused
    rather than taken as a folder name.
    """
    suffix = path.suffix.lower()
    if suffix in FORMATS:
        return True
    if suffix in Image.registered_extensions():
        raise InputError(f"--out {str(path)!r}: {suffix} is not an output format; expected one of {', '.join(FORMATS)}")
    return False


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_folder(folder: Path, what: str = "--out") -> None:
    """``folder`` is a directory the process can write, or can be created as one."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {str(folder)!r} is a file; expected a folder")
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise InputError(f"{what} {str(folder)!r} cannot be created: {str(base)!r} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{what} {str(folder)!r}: no permission to write in {str(base)!r}")


def check_writable_file(path: Path, what: str = "--out") -> None:
    """``path`` can be written as an image file: not a directory, not read-only, in a writable folder."""
    if path.is_dir():
        raise InputError(
            f"{what} {str(path)!r} is an existing directory; expected an image file path "
            f"({', '.join(FORMATS)}) or, for several persons, a folder"
        )
    if path.exists() and not path.is_file():
        raise InputError(f"{what} {str(path)!r} exists and is not a regular file")
    if path.is_file() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {str(path)!r} is read-only")
    check_writable_folder(path.parent, f"{what} {str(path)!r}: its folder")


def files_in_folder(folder: Path, names: Iterable[str]) -> list[Path]:
    """``folder / name`` for each name, refused unless each is a plain file name directly inside ``folder``."""
    check_writable_folder(folder)
    root = folder.resolve()
    out = []
    for name in names:
        path = folder / name
        if Path(name).name != name or name in ("", ".", "..") or path.resolve().parent != root:
            raise InputError(f"output name {name!r} would leave the output folder {str(folder)!r}")
        check_writable_file(path, "output")
        out.append(path)
    return out


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def refuse_overwriting(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """No output may be one of the inputs (the same file, whatever the path spelling or link)."""
    inputs = list(inputs)
    for o in outputs:
        for i in inputs:
            if _same_file(o, i):
                raise InputError(f"output {str(o)!r} is the input {str(i)!r}; it would be overwritten: choose another")


def refuse_inside(folder: Path, protected: Path, what: str) -> None:
    if folder.resolve().is_relative_to(protected.resolve()):
        raise InputError(
            f"--out {str(folder)!r} lies inside {what} {str(protected)!r}, whose files manifest.json hashes; "
            "choose a folder outside it"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(img: Image.Image, path: Path) -> None:
    """Save ``img`` to ``path`` atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=FORMATS.get(path.suffix.lower(), "PNG"))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
