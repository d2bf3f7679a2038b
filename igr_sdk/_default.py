"""The embedded default model: an engine directory shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from igr_sdk._errors import EngineError

DEFAULT_DIR = Path(__file__).parent / "models" / "default"


def default_engine_dir() -> Path:
    if not (DEFAULT_DIR / "manifest.json").is_file():
        raise EngineError(
            f"this installation has no bundled default model at {DEFAULT_DIR}; "
            "pass an engine directory built with export/build_engines.py"
        )
    return DEFAULT_DIR
