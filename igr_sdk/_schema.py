"""The whole of ``manifest.json`` checked when an engine directory is opened.

Every key the runtime reads is checked for presence, type and range, and the graphs' tensor shapes
are checked against the resolution, batch, latent grid, token counts and against each other, so a
malformed manifest is refused with one ``EngineError`` naming the key and what was expected instead
of failing later, deep inside an engine. ``scheduler.prediction_type`` is left to ``Restorer``,
which names the prediction types it supports.
"""

from __future__ import annotations

import math
import re
from typing import Any

from igr_sdk._errors import EngineError
from igr_sdk._preprocess import MAX_GUIDANCE
from igr_sdk._scheduler import TIMESTEP_SPACINGS, max_steps
from igr_sdk.contract import CLIP_SIZE, GRAPHS, LATENT_CHANNELS

DTYPES = ("float32", "float16", "int32", "int64")
BETA_SCHEDULES = ("scaled_linear", "linear")
MAX_SIDE = 16384
MAX_BATCH = 1024
MAX_TRAIN_TIMESTEPS = 100_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MISSING = object()


class Checker:
    """Reads keys of one manifest, raising ``EngineError`` that names the key path and the expectation."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, expected: str, got: Any = _MISSING) -> EngineError:
        if got is _MISSING:
            return EngineError(f"{self.where}: key {key!r} is missing; expected {expected}")
        return EngineError(f"{self.where}: key {key!r} must be {expected}, got {_show(got)}")

    def get(self, obj: dict, key: str, path: str, expected: str, default: Any = _MISSING) -> Any:
        if key in obj:
            return obj[key]
        if default is not _MISSING:
            return default
        raise self.fail(_join(path, key), expected)

    def mapping(self, obj: dict, key: str, path: str = "") -> dict:
        v = self.get(obj, key, path, "an object")
        if not isinstance(v, dict):
            raise self.fail(_join(path, key), "an object", v)
        return v

    def items(self, obj: dict, key: str, path: str = "", default: Any = _MISSING) -> list:
        v = self.get(obj, key, path, "a list", default)
        if not isinstance(v, list):
            raise self.fail(_join(path, key), "a list", v)
        return v

    def integer(self, obj: dict, key: str, path: str = "", lo: int = 1, hi: int | None = None) -> int:
        expected = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        v = self.get(obj, key, path, expected)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise self.fail(_join(path, key), expected, v)
        return v

    def number(self, obj: dict, key: str, path: str, lo: float, hi: float, open_lo: bool = False) -> float:
        expected = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}]"
        v = self.get(obj, key, path, expected)
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        if bad or v < lo or v > hi or (open_lo and v == lo):
            raise self.fail(_join(path, key), expected, v)
        return float(v)

    def text(self, obj: dict, key: str, path: str = "", choices: tuple[str, ...] | None = None, default=_MISSING):
        expected = "a non-empty string" if choices is None else f"one of {list(choices)}"
        v = self.get(obj, key, path, expected, default)
        if v is default:
            return v
        if not isinstance(v, str) or not v or (choices is not None and v not in choices):
            raise self.fail(_join(path, key), expected, v)
        return v

    def flag(self, obj: dict, key: str, path: str = "", default: Any = _MISSING) -> bool:
        v = self.get(obj, key, path, "true or false", default)
        if not isinstance(v, bool):
            raise self.fail(_join(path, key), "true or false", v)
        return v

    def file(self, obj: dict, path: str) -> None:
        """A ``{"file": ..., "sha256": ...}`` entry."""
        name = self.text(obj, "file", path)
        if "\x00" in name:
            raise self.fail(_join(path, "file"), "a file name without NUL characters", name)
        digest = self.get(obj, "sha256", path, "a sha256 digest (64 lowercase hex digits)")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise self.fail(_join(path, "sha256"), "a sha256 digest (64 lowercase hex digits)", digest)

    def files(self, obj: dict, key: str, path: str) -> None:
        for i, d in enumerate(self.items(obj, key, path, default=[])):
            where = f"{_join(path, key)}[{i}]"
            if not isinstance(d, dict):
                raise self.fail(where, "an object with file and sha256", d)
            self.file(d, where)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(v: Any, limit: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the sections --------------------------------------------------------------------------------
def validate_manifest(raw: Any, where: str) -> None:
    """Raise ``EngineError`` unless ``raw`` is a complete, self-consistent manifest."""
    c = Checker(where)
    if not isinstance(raw, dict):
        raise EngineError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    h, w = _resolution(c, raw)
    batch = c.integer(raw, "batch", hi=MAX_BATCH)
    dims = {"B": batch, "2B": 2 * batch, "H": h, "W": w}
    dims.update(_latent(c, raw, h, w))
    cats = c.items(raw, "categories")
    if not cats or any(not isinstance(x, str) or not x for x in cats) or len(set(cats)) != len(cats):
        raise c.fail("categories", "a non-empty list of distinct non-empty strings", cats)
    dims["T"] = c.integer(raw, "text_len")
    dims["P"] = c.integer(raw, "ip_tokens")
    blocks = c.integer(raw, "num_blocks")
    steps = _scheduler(c, raw)
    c.number(raw, "guidance_scale", "", 0.0, MAX_GUIDANCE)
    c.integer(raw, "num_inference_steps", hi=steps)
    c.file(c.mapping(raw, "constants"), "constants")
    if "examples" in raw:
        examples = c.mapping(raw, "examples")
        c.file(examples, "examples")
        c.files(examples, "data", "examples")
    _graphs(c, raw, dims, blocks)
    if "parser" in raw:
        _parser(c, c.mapping(raw, "parser"), cats)


def _resolution(c: Checker, raw: dict) -> tuple[int, int]:
    r = c.get(raw, "resolution", "", "[height, width]")
    ok = isinstance(r, list) and len(r) == 2
    if not ok or any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_SIDE for x in r):
        raise c.fail("resolution", f"[height, width] of integers in [1, {MAX_SIDE}]", r)
    return r[0], r[1]


def _latent(c: Checker, raw: dict, h: int, w: int) -> dict[str, int]:
    lat = c.mapping(raw, "latent")
    c.integer(lat, "channels", "latent", lo=LATENT_CHANNELS, hi=LATENT_CHANNELS)
    f = c.integer(lat, "factor", "latent", hi=64)
    if h % f or w % f:
        raise c.fail("latent.factor", f"a divisor of the resolution {h}x{w}", f)
    for key, size in (("height", h // f), ("width", w // f)):
        c.integer(lat, key, "latent", lo=size, hi=size)
    c.number(lat, "scaling_factor", "latent", 0.0, 1e3, open_lo=True)
    return {"C": LATENT_CHANNELS, "h": h // f, "w": w // f}


def _scheduler(c: Checker, raw: dict) -> int:
    """Check the DDIM constants; returns the largest step count they allow."""
    s = c.mapping(raw, "scheduler")
    p = "scheduler"
    t = c.integer(s, "num_train_timesteps", p, lo=2, hi=MAX_TRAIN_TIMESTEPS)
    start = c.number(s, "beta_start", p, 0.0, 1.0, open_lo=True)
    end = c.number(s, "beta_end", p, 0.0, 1.0, open_lo=True)
    if end < start or end >= 1.0:
        raise c.fail("scheduler.beta_end", f"a number in [beta_start = {start:g}, 1)", end)
    c.text(s, "beta_schedule", p, BETA_SCHEDULES)
    offset = c.integer(s, "steps_offset", p, lo=0, hi=t - 1)
    spacing = c.text(s, "timestep_spacing", p, TIMESTEP_SPACINGS, default="leading")
    c.flag(s, "set_alpha_to_one", p)
    if c.flag(s, "clip_sample", p, default=False):
        raise c.fail("scheduler.clip_sample", "false (the runtime's DDIM does not clip)", True)
    if c.flag(s, "rescale_betas_zero_snr", p, default=False) and s.get("prediction_type") == "epsilon":
        raise c.fail(
            "scheduler.prediction_type",
            "'v_prediction' with rescale_betas_zero_snr (at alpha_bar = 0 an epsilon prediction says nothing of x0)",
            "epsilon",
        )
    return max_steps(t, offset, spacing)


# --- graphs and their tensor shapes --------------------------------------------------------------
def _expected_io(blocks: int) -> dict[str, tuple[dict, dict]]:
    """Per graph, (inputs, outputs) as name -> shape; a string is a size bound by the manifest or the
    first tensor that uses it (the same string must mean the same size everywhere)."""
    refs = {f"ref_{kv}_{i}": ("B", f"N{i}", f"C{kv}{i}") for kv in "kv" for i in range(blocks)}
    return {
        "image_encoder": ({"garment_crop": ("B", 3, CLIP_SIZE, CLIP_SIZE)}, {"ip_tokens": ("B", "P", "Cip")}),
        "vae_encoder": ({"image": ("B", 3, "H", "W")}, {"latent": ("B", "C", "h", "w")}),
        "garmnet": (
            {"person_latent": ("B", "C", "h", "w"), "mask": ("B", 1, "h", "w"), "text_embeds": ("B", "T", "Ctext")},
            refs,
        ),
        "denoiser": (
            {
                "sample": ("2B", "C", "h", "w"),
                "timestep": (1,),
                "text_embeds": ("2B", "T", "Ctext"),
                "ip_tokens": ("2B", "P", "Cip"),
                **refs,
            },
            {"noise_pred": ("2B", "C", "h", "w")},
        ),
        "vae_decoder": ({"latent": ("B", "C", "h", "w")}, {"image": ("B", 3, "H", "W")}),
    }


def _graphs(c: Checker, raw: dict, dims: dict[str, int], blocks: int) -> None:
    graphs = c.mapping(raw, "graphs")
    missing = [g for g in GRAPHS if g not in graphs]
    if missing:
        raise EngineError(f"{c.where} lacks graphs {missing}; expected all of {list(GRAPHS)}")
    expected = _expected_io(blocks)
    for g in GRAPHS:
        if not isinstance(graphs[g], dict):
            raise c.fail(f"graphs.{g}", "an object with engines", graphs[g])
        engines = c.mapping(graphs[g], "engines", f"graphs.{g}")
        if not engines:
            raise c.fail(f"graphs.{g}.engines", "at least one engine", engines)
        for eid, entry in engines.items():
            path = f"graphs.{g}.engines.{eid}"
            if not isinstance(entry, dict):
                raise c.fail(path, "an object", entry)
            _engine(c, entry, path, raw, expected[g], dims)


def _engine(c: Checker, e: dict, path: str, raw: dict, io: tuple[dict, dict], dims: dict[str, int]) -> None:
    c.file(e, path)
    c.files(e, "data", path)
    c.text(e, "precision", path)
    for key in ("gpu", "sm", "trt_version", "key"):
        c.text(e, key, path, default=None)
    for key in ("resolution", "batch"):
        if key in e and e[key] != raw[key]:
            raise c.fail(f"{path}.{key}", f"{raw[key]!r}, the manifest's {key}", e[key])
    for kind, want in zip(("inputs", "outputs"), io):
        got = _tensors(c, e, kind, path)
        if set(got) != set(want):
            raise c.fail(f"{path}.{kind}", f"the tensors {sorted(want)}", sorted(got))
        for name, shape in want.items():
            _match_shape(c, f"{path}.{kind}.{name}.shape", got[name], shape, dims)


def _tensors(c: Checker, e: dict, kind: str, path: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, t in enumerate(c.items(e, kind, path)):
        where = f"{path}.{kind}[{i}]"
        if not isinstance(t, dict):
            raise c.fail(where, "an object with name, shape and dtype", t)
        name = c.text(t, "name", where)
        if name in out:
            raise c.fail(f"{where}.name", "a name not used twice", name)
        shape = c.items(t, "shape", where)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise c.fail(f"{where}.shape", "a list of positive integers", shape)
        c.text(t, "dtype", where, DTYPES)
        out[name] = shape
    return out


def _match_shape(c: Checker, path: str, got: list[int], want: tuple, dims: dict[str, int]) -> None:
    def expected() -> str:
        return "[" + ", ".join(str(dims.get(d, d)) if isinstance(d, str) else str(d) for d in want) + "]"

    if len(got) != len(want):
        raise c.fail(path, expected(), got)
    for size, d in zip(got, want):
        if isinstance(d, str) and d not in dims:
            dims[d] = size  # bound here; later tensors must agree
        if size != (dims[d] if isinstance(d, str) else d):
            raise c.fail(path, expected(), got)


# --- the optional parser graph (igr_sdk._parse) --------------------------------------------------
def _parser(c: Checker, p: dict, categories: list[str]) -> None:
    c.file(p, "parser")
    c.files(p, "data", "parser")
    c.text(p, "precision", "parser")
    c.text(p, "key", "parser", default=None)
    io = {kind: _tensors(c, p, kind, "parser") for kind in ("inputs", "outputs")}
    for kind, name in (("inputs", "image"), ("outputs", "logits")):
        if list(io[kind]) != [name]:
            raise c.fail(f"parser.{kind}", f"one tensor named {name!r}", sorted(io[kind]))
        if any(t["dtype"] not in ("float32", "float16") for t in p[kind]):
            raise c.fail(f"parser.{kind}.{name}.dtype", "float32 or float16", p[kind][0]["dtype"])
    image, logits = io["inputs"]["image"], io["outputs"]["logits"]
    if len(image) != 4 or image[:2] != [1, 3]:
        raise c.fail("parser.inputs.image.shape", "[1, 3, height, width]", image)
    if len(logits) != 4 or logits[0] != 1 or logits[2] > image[2] or logits[3] > image[3]:
        raise c.fail("parser.outputs.logits.shape", f"[1, labels, h <= {image[2]}, w <= {image[3]}]", logits)
    labels = c.items(p, "labels", "parser")
    names = all(isinstance(x, str) and x for x in labels) and len(set(labels)) == len(labels)
    if len(labels) != logits[1] or not names:
        raise c.fail("parser.labels", f"{logits[1]} distinct non-empty names, one per logit channel", labels)
    cats = c.mapping(p, "categories", "parser")
    if not cats or not set(cats) <= set(categories):
        raise c.fail("parser.categories", f"an object whose keys are among {categories}", sorted(cats))
    for cat, ids in cats.items():
        ok = isinstance(ids, list) and ids and all(_label_id(i, len(labels)) for i in ids)
        if not ok or len(set(ids)) != len(ids):
            raise c.fail(f"parser.categories.{cat}", f"a non-empty list of distinct label ids < {len(labels)}", ids)
    pre = c.mapping(p, "preprocess", "parser")
    c.text(pre, "resize", "parser.preprocess", ("stretch",))
    for key, lo, hi in (("mean", -10.0, 10.0), ("std", 1e-6, 10.0)):
        v = c.items(pre, key, "parser.preprocess")
        bad = len(v) != 3 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v)
        if bad or not all(math.isfinite(x) and lo <= x <= hi for x in v):
            raise c.fail(f"parser.preprocess.{key}", f"3 numbers in [{lo:g}, {hi:g}], one per RGB channel", v)
    post = c.mapping(p, "postprocess", "parser")
    for key in ("min_component", "max_hole"):
        c.number(post, key, "parser.postprocess", 0.0, 1.0)


def _label_id(i: Any, n: int) -> bool:
    return not isinstance(i, bool) and isinstance(i, int) and 0 <= i < n
