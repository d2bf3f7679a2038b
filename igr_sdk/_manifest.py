"""``manifest.json``: the single source of truth an engine directory carries (DESIGN.md section 3).

Layout (schema ``igr-engines/1``)::

    {
      "schema": "igr-engines/1",
      "resolution": [H, W], "batch": B,
      "latent": {"channels": 4, "height": h, "width": w, "factor": 8, "scaling_factor": 0.18215},
      "categories": ["upper", "lower", "full"], "ip_tokens": 4, "text_len": 77, "num_blocks": 16,
      "guidance_scale": 1.5, "num_inference_steps": 25,
      "scheduler": {... SD1.5 DDIM constants ...},
      "constants": {"file": "constants.npz", "sha256": "..."},   # prompt_embeds, uncond_ip_tokens
      "examples": {"file": "examples/examples.json", "sha256": "...",   # optional: bundled examples
                   "data": [{"file": "examples/upper_person.jpg", "sha256": "..."}, ...]},
      "parser": {"file": "parser.onnx", "sha256": "...", "labels": [...], "categories": {...}, ...},
                   # optional: the human parser that makes masks from the photo (igr_sdk._parse)
      "graphs": {
        "<graph>": {"engines": {"<engine id>": {
            "file": "...", "sha256": "...", "data": [{"file": "...", "sha256": "..."}],
            "precision": "fp32", "inputs": [{"name", "shape", "dtype"}], "outputs": [...],
            "key": "<build key>", ...}}}},
      "source_checkpoint": {...}, "tools": {...}
    }

Engine ids: ``onnxruntime-cpu``, ``onnxruntime-cuda`` and ``tensorrt-sm_XX``. Files are untrusted:
the whole manifest is validated when it is read (``igr_sdk._schema``), every path must stay inside the
directory and every hash is checked before a file is loaded.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igr_sdk._errors import EngineError
from igr_sdk._schema import validate_manifest
from igr_sdk.contract import GRAPHS, SCHEMA

__all__ = ["GRAPHS", "SCHEMA", "EngineEntry", "Manifest", "TensorInfo", "check_file", "read_manifest"]

MAX_MANIFEST_BYTES = 16 << 20


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class EngineEntry:
    graph: str
    engine_id: str
    path: Path
    sha256: str
    data: tuple[tuple[Path, str], ...]
    precision: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    raw: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    root: Path
    raw: dict[str, Any]

    @property
    def resolution(self) -> tuple[int, int]:
        h, w = self.raw["resolution"]
        return int(h), int(w)

    @property
    def batch(self) -> int:
        return int(self.raw["batch"])

    @property
    def latent_factor(self) -> int:
        return int(self.raw["latent"]["factor"])

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.raw["categories"])

    def engine_ids(self) -> set[str]:
        ids = [set(g["engines"]) for g in self.raw["graphs"].values()]
        return set.intersection(*ids) if ids else set()

    def engine(self, graph: str, engine_id: str) -> EngineEntry:
        try:
            e = self.raw["graphs"][graph]["engines"][engine_id]
        except KeyError:
            raise EngineError(
                f"{self.root}: manifest has no {engine_id!r} engine for graph {graph!r}; "
                f"available: {sorted(self.engine_ids())}"
            ) from None
        return EngineEntry(
            graph=graph,
            engine_id=engine_id,
            path=self.resolve(e["file"]),
            sha256=e["sha256"],
            data=tuple((self.resolve(d["file"]), d["sha256"]) for d in e.get("data", [])),
            precision=e["precision"],
            inputs=tuple(TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in e["inputs"]),
            outputs=tuple(TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in e["outputs"]),
            raw=e,
        )

    def resolve(self, name: str) -> Path:
        """A path the manifest names, refused unless it stays inside the engine directory."""
        root = self.root.resolve()
        p = (root / name).resolve()
        if not p.is_relative_to(root):
            raise EngineError(f"manifest names {name!r}, which lies outside the engine directory {root}")
        return p

    def verify(self, entry: EngineEntry) -> None:
        for path, digest in ((entry.path, entry.sha256), *entry.data):
            check_file(path, digest)

    def named_files(self) -> list[str]:
        """Every file name the manifest lists (constants, engines with their data, examples, parser)."""
        entries = [self.raw["constants"]]
        for g in self.raw["graphs"].values():
            for e in g["engines"].values():
                entries += [e, *e.get("data", [])]
        if "examples" in self.raw:
            entries += [self.raw["examples"], *self.raw["examples"].get("data", [])]
        if "parser" in self.raw:
            entries += [self.raw["parser"], *self.raw["parser"].get("data", [])]
        return [e["file"] for e in entries]


def check_file(path: Path, digest: str, what: str = "engine file") -> None:
    if not path.is_file():
        raise EngineError(f"{what} {str(path)!r} is missing")
    got = sha256_file(path)
    if got != digest:
        raise EngineError(
            f"{what} {str(path)!r} does not match its manifest hash "
            f"(sha256 {got[:12]}..., expected {digest[:12]}...): it was modified or corrupted"
        )


def read_constants(manifest: Manifest) -> dict[str, np.ndarray]:
    """The hashed constants file: prompt embeddings, one per category, and the unconditional IP tokens,
    checked against the shapes the manifest's graphs take."""
    c = manifest.raw["constants"]
    path = manifest.resolve(c["file"])
    check_file(path, c["sha256"], "constants file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named arrays")
        with z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise EngineError(f"constants file {str(path)!r} is not a readable .npz archive: {e}") from None
    denoiser = next(iter(manifest.raw["graphs"]["denoiser"]["engines"].values()))
    shapes = {t["name"]: t["shape"] for t in denoiser["inputs"]}
    expected = {
        "prompt_embeds": (len(manifest.categories), *shapes["text_embeds"][1:]),
        "uncond_ip_tokens": (1, *shapes["ip_tokens"][1:]),
    }
    for key, shape in expected.items():
        a = arrays.get(key)
        if a is None:
            raise EngineError(f"constants file {str(path)!r} has no array {key!r}; it holds {sorted(arrays)}")
        if a.shape != shape or not np.issubdtype(a.dtype, np.floating):
            why = f" (one row per category of {list(manifest.categories)})" if key == "prompt_embeds" else ""
            raise EngineError(
                f"constants file {str(path)!r}: {key} is {a.dtype} {list(a.shape)}, "
                f"expected floating point {list(shape)}{why}"
            )
        if not np.isfinite(a).all():
            raise EngineError(f"constants file {str(path)!r}: {key} holds NaN or infinite values")
    return {k: arrays[k] for k in expected}


def read_manifest(root: str | Path) -> Manifest:
    r = Path(root)
    if not r.is_dir():
        raise EngineError(f"engine directory {str(r)!r} does not exist")
    p = r / "manifest.json"
    if not p.is_file():
        raise EngineError(f"{str(r)!r} has no manifest.json; build one with `python export/build_engines.py`")
    raw = _load_json(p)
    if not isinstance(raw, dict):
        raise EngineError(f"{str(p)!r}: expected a JSON object, got {type(raw).__name__}")
    schema = raw.get("schema")
    if schema != SCHEMA:
        raise EngineError(
            f"{str(p)!r} has schema {schema!r}; this igr_sdk reads {SCHEMA!r}: rebuild the engines "
            "with the matching version of export/build_engines.py"
        )
    validate_manifest(raw, repr(str(p)))
    manifest = Manifest(r, raw)
    for name in manifest.named_files():
        manifest.resolve(name)
    return manifest


def _load_json(p: Path) -> Any:
    size = p.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise EngineError(f"{str(p)!r} is {size} bytes; a manifest is expected under {MAX_MANIFEST_BYTES} bytes")
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise EngineError(f"{str(p)!r} is not valid JSON: {e}") from None
    except OSError as e:
        raise EngineError(f"{str(p)!r} cannot be read: {e.strerror or e}") from None
