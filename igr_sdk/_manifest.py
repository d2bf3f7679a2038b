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
      "graphs": {
        "<graph>": {"engines": {"<engine id>": {
            "file": "...", "sha256": "...", "data": [{"file": "...", "sha256": "..."}],
            "precision": "fp32", "inputs": [{"name", "shape", "dtype"}], "outputs": [...],
            "key": "<build key>", ...}}}},
      "source_checkpoint": {...}, "tools": {...}
    }

Engine ids: ``onnxruntime-cpu``, ``onnxruntime-cuda`` and ``tensorrt-sm_XX``. Files are untrusted:
every path must stay inside the directory and every hash is checked before an engine is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igr_sdk._errors import EngineError

SCHEMA = "igr-engines/1"
GRAPHS = ("image_encoder", "vae_encoder", "garmnet", "denoiser", "vae_decoder")


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


def check_file(path: Path, digest: str) -> None:
    if not path.is_file():
        raise EngineError(f"engine file {str(path)!r} is missing")
    got = sha256_file(path)
    if got != digest:
        raise EngineError(
            f"engine file {str(path)!r} does not match its manifest hash "
            f"(sha256 {got[:12]}..., expected {digest[:12]}...): it was modified or corrupted"
        )


def read_manifest(root: str | Path) -> Manifest:
    r = Path(root)
    if not r.is_dir():
        raise EngineError(f"engine directory {str(r)!r} does not exist")
    p = r / "manifest.json"
    if not p.is_file():
        raise EngineError(f"{str(r)!r} has no manifest.json; build one with `python export/build_engines.py`")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"{str(p)!r} is not valid JSON: {e}") from None
    schema = raw.get("schema") if isinstance(raw, dict) else None
    if schema != SCHEMA:
        raise EngineError(
            f"{str(p)!r} has schema {schema!r}; this igr_sdk reads {SCHEMA!r}: rebuild the engines "
            "with the matching version of export/build_engines.py"
        )
    missing = [g for g in GRAPHS if g not in raw.get("graphs", {})]
    if missing:
        raise EngineError(f"{str(p)!r} lacks graphs {missing}")
    return Manifest(r, raw)
