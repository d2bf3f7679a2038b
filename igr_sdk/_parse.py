"""Masks from the photo: the optional ``parser`` graph of an engine directory, numpy around it.

A human parser (a SegFormer exported by ``export/build_engines.py --parser DIR``) labels every pixel
of the photo; the garment mask of a category is the union of the labels the manifest lists for it.
Its ``parser`` entry (checked by ``igr_sdk._schema``)::

    "parser": {
      "file": "parser.onnx", "sha256": "...", "data": [], "precision": "fp32",
      "inputs": [{"name": "image", "shape": [1, 3, Hp, Wp], "dtype": "float32"}],
      "outputs": [{"name": "logits", "shape": [1, L, Hp/k, Wp/k], "dtype": "float32"}],
      "labels": ["background", "hat", ...],                         # the L labels, in logit order
      "categories": {"upper": [4], "lower": [5, 6], "full": [7]},   # label ids whose union is the garment
      "preprocess": {"resize": "stretch", "mean": [3 floats], "std": [3 floats]},   # on RGB in [0, 1]
      "postprocess": {"min_component": 0.05, "max_hole": 0.01},
      "source": {...}, "key": "..."
    }

Preprocessing: the photo stretched to Hp x Wp (bilinear, as Hugging Face's SegformerImageProcessor
does), scaled to [0, 1] and normalised per channel. Postprocessing: the logits upsampled to Hp x Wp
(bilinear with half-pixel centres, torch's ``interpolate(align_corners=False)``), argmax, the union of
the category's labels, then a cleanup: pieces smaller than ``min_component`` of the largest piece are
dropped and holes smaller than ``max_hole`` of the mask are filled; last, the mask is resized to the
photo's size.
"""

from __future__ import annotations

import logging
import re
import threading

import numpy as np
from PIL import Image

from igr_sdk._backend import require
from igr_sdk._errors import EngineError, InputError
from igr_sdk._manifest import Manifest, check_file
from igr_sdk._onnxruntime import session_options

log = logging.getLogger(__name__)

GARMENT_WORDS = {"upper": "upper-body", "lower": "lower-body", "full": "full-body"}


# --- pre- and postprocessing ------------------------------------------------------------------------
def preprocess(rgb: np.ndarray, height: int, width: int, mean, std) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, height, width) float32: stretched, scaled to [0, 1], normalised."""
    img = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def _interpolation(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights with half-pixel centres (align_corners=False)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def upsample(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(L, h, w) -> (L, height, width), bilinear as torch's ``interpolate(align_corners=False)``."""
    _, h, w = logits.shape
    return np.einsum("Yh,lhw,Xw->lYX", _interpolation(height, h), logits.astype(np.float32), _interpolation(width, w))


def label_map(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(L, h, w) logits -> (height, width) label ids."""
    return upsample(logits, height, width).argmax(axis=0)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of True as (row, start, end) arrays, end exclusive, in row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def components(mask: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """4-connected components of a (H, W) bool mask, over its runs.

    Returns the runs (row, start, end), each run's component id and each component's area in pixels
    (indexed by id; ids that are no run's component have area 0).
    """
    rows, starts, ends = _runs(mask)
    parent = list(range(len(rows)))
    first = np.searchsorted(rows, np.arange(mask.shape[0] + 2))  # row r's runs: first[r]:first[r + 1]
    for r in range(mask.shape[0] - 1):
        i, i_end, j, j_end = first[r], first[r + 1], first[r + 1], first[r + 2]
        while i < i_end and j < j_end:  # runs of two neighbouring rows that overlap touch
            if starts[i] < ends[j] and starts[j] < ends[i]:
                a, b = _find(parent, i), _find(parent, j)
                parent[max(a, b)] = min(a, b)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    ids = np.array([_find(parent, i) for i in range(len(rows))], dtype=np.int64)
    areas = np.bincount(ids, weights=ends - starts, minlength=len(rows)) if len(rows) else np.zeros(0)
    return (rows, starts, ends), ids, areas


def _paint(shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    edges = np.zeros((shape[0], shape[1] + 1), np.int32)
    np.add.at(edges, (rows, starts), 1)
    np.add.at(edges, (rows, ends), -1)
    return np.cumsum(edges, axis=1)[:, :-1] > 0


def clean(mask: np.ndarray, min_component: float, max_hole: float) -> np.ndarray:
    """Drop pieces smaller than ``min_component`` x the largest piece; fill holes (background not
    connected to the border) smaller than ``max_hole`` x the mask's area."""
    (rows, starts, ends), ids, areas = components(mask)
    if not len(rows):
        return mask.copy()
    keep = areas[ids] >= min_component * areas.max()
    out = _paint(mask.shape, rows[keep], starts[keep], ends[keep])
    (rows, starts, ends), ids, areas = components(~out)
    h, w = mask.shape
    at_border = (rows == 0) | (rows == h - 1) | (starts == 0) | (ends == w)
    border = np.zeros(len(areas), bool)
    border[ids[at_border]] = True
    hole = ~border[ids] & (areas[ids] < max_hole * out.sum())
    return out | _paint(mask.shape, rows[hole], starts[hole], ends[hole])


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) bool -> (height, width) bool: bilinear on 0/255, then half of white."""
    if mask.shape == (height, width):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.BILINEAR)
    return np.asarray(img) >= 128


# --- the graph --------------------------------------------------------------------------------------
class Parser:
    """The engine directory's parser graph on ONNX Runtime; its session opens on first use."""

    def __init__(self, manifest: Manifest, device: str | int | None = None, threads: int | None = None):
        entry = manifest.raw["parser"]
        self.manifest = manifest
        self.labels: tuple[str, ...] = tuple(entry["labels"])
        self.categories: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in entry["categories"].items()}
        _, _, self.height, self.width = entry["inputs"][0]["shape"]
        self._mean = entry["preprocess"]["mean"]
        self._std = entry["preprocess"]["std"]
        post = entry["postprocess"]
        self.min_component, self.max_hole = post["min_component"], post["max_hole"]
        self._entry = entry
        self._device, self._threads = device, threads
        self._session = None
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._session is None:
                self._session = self._load()
        return self._session

    def _load(self):
        ort = require("onnxruntime", "onnxruntime")
        e = self._entry
        path = self.manifest.resolve(e["file"])
        for f, digest in ((path, e["sha256"]), *((self.manifest.resolve(d["file"]), d["sha256"]) for d in e["data"])):
            check_file(f, digest, "parser file")  # hashes before ONNX Runtime parses a byte of it
        so = session_options(ort, self._threads)
        providers = _providers(ort.get_available_providers(), self._device)
        try:
            session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as err:  # ORT raises its own exception types for invalid models
            raise EngineError(f"ONNX Runtime cannot load the parser {path.name}: {err}") from None
        got = [(i.name, list(i.shape)) for i in session.get_inputs()]
        want = [(t["name"], t["shape"]) for t in e["inputs"]]
        if got != want:
            raise EngineError(f"parser {path.name} takes {got}; manifest.json says {want}")
        log.info("parser %s on %s", path.name, session.get_providers()[0])
        return session

    def close(self) -> None:
        with self._lock:
            self._session = None

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 photo -> (L, h, w) float32 logits."""
        x = preprocess(rgb, self.height, self.width, self._mean, self._std)
        session = self._open()
        (out,) = session.run(["logits"], {"image": x.astype(self._entry["inputs"][0]["dtype"])})
        out = np.asarray(out, dtype=np.float32)[0]
        if not np.isfinite(out).all():
            raise EngineError("the parser produced NaN or infinite logits; expected finite numbers")
        return out

    def mask(self, rgb: np.ndarray, category: str, name: str = "the person image") -> np.ndarray:
        """The garment mask of ``category`` in the photo, (H, W) bool at the photo's size."""
        ids = self.categories.get(category)
        if ids is None:
            raise InputError(
                f"the parser has no labels for category {category!r} (it maps {sorted(self.categories)}); "
                "pass a mask for this category"
            )
        labels = label_map(self.logits(rgb), self.height, self.width)
        garment = clean(np.isin(labels, ids), self.min_component, self.max_hole)
        if not garment.any():
            names = " or ".join(self.labels[i] for i in ids)
            raise InputError(
                f"no {GARMENT_WORDS.get(category, category)} garment found in {name} "
                f"(the parser marked no pixel as {names}); check the category or pass a mask"
            )
        return resize_mask(garment, *rgb.shape[:2])


def _providers(available: list[str], device: str | int | None) -> list:
    """CUDA when asked for (or, with no device given, when ONNX Runtime has it), else the CPU."""
    if isinstance(device, int):  # a TensorRT GPU index
        device = f"cuda:{device}"
    cuda = re.fullmatch(r"cuda(?::(\d+))?", str(device).strip().lower()) if device is not None else None
    if "CUDAExecutionProvider" in available and (cuda or device is None):
        device_id = int(cuda.group(1) or 0) if cuda else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_parser(manifest: Manifest, device: str | int | None = None, threads: int | None = None) -> Parser | None:
    """The engine directory's parser, or None when it has none."""
    return Parser(manifest, device, threads) if "parser" in manifest.raw else None
