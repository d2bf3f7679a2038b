"""INT8 engines for ONNX Runtime on the CPU: calibration on real inputs, static QDQ quantisation,
and a per-graph choice between int8 and fp32 made by measurement.

``build(BuildOptions(..., precision="int8"))`` first builds (or keeps) the fp32 engines, then:

1. **Pairs.** Calibration pairs and held-out pairs: synthetic pairs from ``train/synthetic.py`` by
   default (seeds ``seed`` and ``seed + 1``, at the engine resolution), or the user's own pairs
   (``--calibration DIR``, any layout ``train.datasets.open_dataset`` reads: the first pairs
   calibrate, the last ones are held out).
2. **Capture.** igr_sdk's own ``Restorer`` runs the fp32 engines on every pair (the model's own
   preprocessing, CFG batch, the sampling steps of the manifest) and records every graph call's
   inputs: the denoiser's at each of the 25 timesteps, the other graphs' once per request.
3. **Quantise** each candidate graph from its fp32 ONNX with ONNX Runtime's quantisation tool on
   its calibration inputs (``export/int8_graph.py`` has the settings, and why).
4. **Measure** each int8 graph alone: its output against torch fp32 on the held-out inputs (the
   int8 parity check), and the restored garment of the held-out pairs with only this graph in int8
   against the all-fp32 engines (SSIM, PSNR, and LPIPS where its weights are found:
   ``export/int8_measure.py``). A graph that fails and has an output stage (nodes at the resolution
   of an image-shaped output: the VAE decoder's full-resolution convolutions) is quantised and
   measured again with that stage fp32. Then all accepted graphs together; while that combination
   fails, the accepted graph that hurt the image most alone (LPIPS, else SSIM) gives way: first to
   its version with the output stage fp32, where it has one not yet tried, then to fp32.
5. **Record** per graph in the manifest: ``precision``, the calibration set's hash, the nodes kept
   fp32 besides the graph edges (``output_stage_fp32``) and the measured numbers with the reason
   for the choice; graphs that stay fp32 keep their fp32 engine.

docs/int8.md has the per-graph measurement and the commands that measure latency and quality.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from export.build import BuildError, BuildOptions
from export.graphs import GRAPHS, module_for, specs
from export.int8_graph import FLOAT_OUTPUT_OPS, QUANTIZED_OPS, Quantized, count_qdq, quantize_graph
from export.int8_measure import (
    ImageScorer,
    Int8Limits,
    error_text,
    image_text,
    load_perceptual,
    output_error,
    passes,
    weakest,
)
from export.int8_pairs import Pair, folder_pairs, open_folder, pairs_sha256, synthetic_pairs
from igr_sdk import EngineError
from igr_sdk.engines import Manifest, sha256_file

log = logging.getLogger(__name__)

ENGINE = "onnxruntime-cpu"
SETTINGS = {
    "format": "QDQ",
    "ops": list(QUANTIZED_OPS),
    "weights": "int8, symmetric, per channel",
    "activations": "uint8, asymmetric, per tensor",
    "calibration": "percentile 99.999",
    "kept_fp32": "Conv/MatMul/Gemm nodes reading a graph input or writing a graph output",
    "float_outputs": list(FLOAT_OUTPUT_OPS),
    "output_stage": "fp32 in a graph that fails all int8, alone or combined, and has one",
}


@dataclass(frozen=True)
class Int8Options:
    """How an int8 build calibrates and judges its graphs."""

    calibration: Path | None = None  # a folder of the user's own pairs; None: synthetic pairs
    pairs: int = 8  # calibration pairs (requests)
    eval_pairs: int = 4  # held-out pairs the choice is measured on
    seed: int = 20_000  # synthetic calibration pairs; the held-out ones use seed + 1
    graphs: tuple[str, ...] = GRAPHS  # candidates; the others stay fp32
    steps: int | None = None  # sampling steps of the capture (None: the manifest's)
    limits: Int8Limits = field(default_factory=Int8Limits)
    graph_limits: Mapping[str, Int8Limits] = field(default_factory=dict)  # per-graph overrides
    reduce_range: bool = False  # 7-bit weights, for hosts without VNNI
    threads: int | None = None  # ONNX Runtime intra-op threads while measuring (None: its default)
    lpips_weights: tuple[Path, ...] = ()  # LPIPS weights (files or a folder); (): fetch_metric_weights.py's cache

    def limits_for(self, graph: str) -> Int8Limits:
        return self.graph_limits.get(graph, self.limits)

    def check(self) -> None:
        for name in ("pairs", "eval_pairs", "steps"):
            v = getattr(self, name)
            if (v is not None or name != "steps") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise BuildError(f"int8 {name} must be an integer >= 1, got {v!r}")
        unknown = [g for g in (*self.graphs, *self.graph_limits) if g not in GRAPHS]
        if unknown or not self.graphs:
            raise BuildError(f"int8 graphs {list(self.graphs)}: expected a non-empty subset of {list(GRAPHS)}")
        for lim in (self.limits, *self.graph_limits.values()):
            lim.check()


# --- pairs -----------------------------------------------------------------------------------------
def load_pairs(opts: Int8Options, size: tuple[int, int]) -> tuple[list[Pair], list[Pair], str]:
    if opts.calibration is None:
        cal = synthetic_pairs(opts.pairs, opts.seed, size)
        held = synthetic_pairs(opts.eval_pairs, opts.seed + 1, size)
        return cal, held, f"synthetic (train/synthetic.py, seeds {opts.seed} and {opts.seed + 1})"
    root = Path(opts.calibration)
    cal, held = folder_pairs(root, opts.pairs, opts.eval_pairs)
    return cal, held, str(root.resolve())


def preflight(opts: Int8Options | None) -> None:
    """Refuse bad int8 options and an unusable calibration folder before any graph is exported."""
    opts = opts or Int8Options()
    opts.check()
    if opts.calibration is not None:
        open_folder(Path(opts.calibration))


# --- running the engines ---------------------------------------------------------------------------
def session(path: Path, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the runtime loads engines
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


class SessionBackend:
    """igr_sdk's backend protocol over one ONNX Runtime session per graph; optionally records the
    inputs of every call (what the runtime really feeds each graph)."""

    name = ENGINE
    reentrant = True

    def __init__(self, sessions: Mapping[str, Any], dtypes: Mapping[tuple[str, str], np.dtype], record: bool = False):
        self.sessions = dict(sessions)
        self._dtypes = dtypes
        self.calls: dict[str, list[dict[str, np.ndarray]]] | None = {} if record else None

    def run(self, graph: str, feeds: dict) -> dict:
        if self.calls is not None:
            self.calls.setdefault(graph, []).append(dict(feeds))  # the runtime never writes into its feeds
        sess = self.sessions[graph]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))

    def to_host(self, x) -> np.ndarray:
        return x

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return self._dtypes[(graph, name)]


@dataclass
class Pipeline:
    """Restores pairs through a chosen session per graph with the runtime's own ``Restorer``."""

    manifest: Manifest
    constants: dict[str, np.ndarray]
    steps: int
    dtypes: dict[tuple[str, str], np.dtype]

    def restore(
        self, sessions: Mapping[str, Any], pairs: Sequence[Pair], seeds: Sequence[int], record: bool = False
    ) -> tuple[list[np.ndarray], dict[str, list[dict[str, np.ndarray]]]]:
        from igr_sdk import Restorer

        backend = SessionBackend(sessions, self.dtypes, record)
        restorer = Restorer(self.manifest, backend, self.constants)
        result = restorer.restore(
            [p.person for p in pairs],
            [p.mask for p in pairs],
            [p.category for p in pairs],
            steps=self.steps,
            guidance_scale=float(self.manifest.raw["guidance_scale"]),
            seed=list(seeds),
        )
        return [np.asarray(im.convert("RGB")) for im in result.images], backend.calls or {}


# --- measuring -------------------------------------------------------------------------------------
def _spread(items: Sequence, k: int) -> list:
    """Up to ``k`` items evenly spread over the sequence (the denoiser's calls span all timesteps)."""
    if len(items) <= k:
        return list(items)
    return [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, k).round())]


@dataclass
class Candidate:
    graph: str
    quantized: Quantized
    session: Any
    measured: dict[str, Any] = field(default_factory=dict)
    accepted: bool = False
    reason: str = ""

    @property
    def files(self) -> list[Path]:
        return self.quantized.files

    @property
    def stage_left(self) -> bool:
        """Whether a version with the output stage fp32 exists and is not this one."""
        return bool(self.quantized.output_stage) and not self.quantized.output_stage_fp32


# --- the build stage -------------------------------------------------------------------------------
def _hash(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _files_intact(root: Path, entry: Mapping) -> bool:
    return all(
        (root / f["file"]).is_file() and sha256_file(root / f["file"]) == f["sha256"]
        for f in [entry, *entry.get("data", [])]
    )


def _file_entry(root: Path, files: Sequence[Path]) -> dict:
    main, *data = files
    return {
        "file": main.relative_to(root).as_posix(),
        "sha256": sha256_file(main),
        "data": [{"file": d.relative_to(root).as_posix(), "sha256": sha256_file(d)} for d in data],
    }


def host_info() -> dict[str, Any]:
    """The build host's CPU as far as int8 kernels care (VNNI: no u8 x s8 saturation)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i686", "x86")
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"}) if flags else None
    return {"machine": machine, "vnni": vnni if x86 else None}


def quantize_engines(manifest: dict, out: Path, model, o: BuildOptions, prev: Mapping) -> None:
    """Replace the fp32 ``onnxruntime-cpu`` entries of ``manifest`` by int8 ones where measurement
    allows, and add the ``quantization`` summary (in place)."""
    opts = o.int8 or Int8Options()
    opts.check()
    h, w = manifest["resolution"]
    host = host_info()
    if host["vnni"] is False and not opts.reduce_range:
        log.warning(
            "this CPU has no VNNI: u8 x s8 products may saturate in ONNX Runtime's int8 kernels here; "
            "consider reduce_range (--int8-reduce-range) if the measured quality falls short"
        )
    cal_pairs, held_pairs, source = load_pairs(opts, (h, w))
    perceptual = load_perceptual(opts.lpips_weights)
    steps = opts.steps or int(manifest["num_inference_steps"])
    fp32 = {g: manifest["graphs"][g]["engines"][ENGINE] for g in GRAPHS}
    cal_sha, held_sha = pairs_sha256(cal_pairs), pairs_sha256(held_pairs)
    import onnxruntime as ort

    key = _hash(
        fp32={g: [fp32[g]["key"], fp32[g]["sha256"]] for g in GRAPHS},  # a re-exported engine counts too
        calibration=cal_sha,
        held_out=held_sha,
        steps=steps,
        graphs=list(opts.graphs),
        limits=asdict(opts.limits),
        graph_limits={g: asdict(v) for g, v in sorted(opts.graph_limits.items())},
        reduce_range=opts.reduce_range,
        lpips=list(perceptual.files),  # fetching the weights later re-decides
        settings=SETTINGS,
        onnxruntime=ort.__version__,
    )
    old = prev.get("quantization")
    old_entries = {g: prev.get("graphs", {}).get(g, {}).get("engines", {}).get(ENGINE) for g in GRAPHS}
    intact = all(e and _files_intact(out, e) for e in old_entries.values())
    if isinstance(old, dict) and old.get("key") == key and intact:
        for g in GRAPHS:
            manifest["graphs"][g]["engines"][ENGINE] = old_entries[g]
        manifest["quantization"] = old
        log.info("int8: calibration and choices up to date, kept")
        return

    summary: dict[str, Any] = {
        "key": key,
        "engine": ENGINE,
        "calibration": {
            "source": source,
            "pairs": len(cal_pairs),
            "sha256": cal_sha,
            "seeds": list(range(len(cal_pairs))),
        },
        "held_out": {"pairs": len(held_pairs), "sha256": held_sha, "seeds": _held_seeds(len(held_pairs))},
        "steps": steps,
        "guidance_scale": manifest["guidance_scale"],
        "settings": {**SETTINGS, "reduce_range": opts.reduce_range},
        "limits": asdict(opts.limits),
        "graph_limits": {g: asdict(v) for g, v in opts.graph_limits.items()},
        "build_host": host,
        "perceptual": perceptual.summary(),
    }
    with tempfile.TemporaryDirectory(dir=out, prefix=".int8-") as tmp:
        results = _measure_and_decide(
            manifest, out, model, o, opts, fp32, cal_pairs, held_pairs, steps, perceptual, Path(tmp)
        )
    summary["combined"] = results.pop("_combined")
    for g in GRAPHS:
        c: Candidate | None = results.get(g)
        info = {
            "decision": "int8" if c and c.accepted else "fp32",
            "reason": c.reason if c else "not a candidate graph (int8 graphs option)",
            "calibration_sha256": cal_sha,
            # besides the graph-edge nodes every int8 graph keeps (export/int8_graph.py)
            "output_stage_fp32": list(c.quantized.output_stage)
            if c and c.accepted and c.quantized.output_stage_fp32
            else [],
            "measured": c.measured if c else {},
        }
        base = {k: v for k, v in fp32[g].items() if k != "quantization"}
        if c and c.accepted:
            entry = {
                **_file_entry(out, c.files),
                "precision": "int8",
                "inputs": base["inputs"],
                "outputs": base["outputs"],
                "key": key,
                "resolution": base.get("resolution", [h, w]),
                "batch": base.get("batch", manifest["batch"]),
                "onnx": base["onnx"],  # the fp32 graph it was quantised from
                "fp32": base,  # the fp32 engine, kept for a rebuild and for comparison
                "quantization": info,
            }
        else:
            entry = {**base, "quantization": info}
            for f in c.files if c else []:
                f.unlink(missing_ok=True)
        manifest["graphs"][g]["engines"][ENGINE] = entry
        log.info("int8: %s -> %s: %s", g, info["decision"], info["reason"])
    manifest["quantization"] = summary


def _held_seeds(n: int) -> list[int]:
    return [10_000 + i for i in range(n)]


def _measure_and_decide(
    manifest: dict,
    out: Path,
    model,
    o: BuildOptions,
    opts: Int8Options,
    fp32: Mapping[str, Mapping],
    cal_pairs: list[Pair],
    held_pairs: list[Pair],
    steps: int,
    perceptual,
    tmp: Path,
) -> dict[str, Any]:
    h, w = manifest["resolution"]
    spec_all = specs(model, h, w, o.batch)
    dtypes = {(g, s.name): np.dtype(s.dtype) for g, sp in spec_all.items() for s in sp.inputs}
    constants = dict(np.load(out / manifest["constants"]["file"], allow_pickle=False))
    pipe = Pipeline(Manifest(out, manifest), constants, steps, dtypes)
    base = {g: session(out / fp32[g]["file"], opts.threads) for g in GRAPHS}

    n_cal, n_held = len(cal_pairs), len(held_pairs)
    log.info("int8: capturing graph inputs: %d calibration and %d held-out pairs, %d steps", n_cal, n_held, steps)
    _, cal_calls = pipe.restore(base, cal_pairs, range(len(cal_pairs)), record=True)
    seeds = _held_seeds(len(held_pairs))
    reference, held_calls = pipe.restore(base, held_pairs, seeds, record=True)
    score = ImageScorer(reference, [p.garment for p in held_pairs], perceptual)

    def restored(sessions: Mapping[str, Any]) -> list[np.ndarray] | str:
        try:
            return pipe.restore(sessions, held_pairs, seeds)[0]
        except EngineError as e:  # e.g. NaN from an engine: a measured failure, not a crash
            return f"the restore failed: {e}"

    def candidate(g: str, output_stage_fp32: bool = False) -> Candidate:
        """Quantise ``g`` and measure it alone (a version with the output stage fp32 replaces the file of
        the one before: it is only built once that one is rejected)."""
        lim = opts.limits_for(g)
        dst = out / f"{g}.int8.{ENGINE}.onnx"
        feeds = cal_calls.get(g, [])
        q = quantize_graph(out / fp32[g]["onnx"]["file"], dst, feeds, tmp, opts.reduce_range, output_stage_fp32)
        c = Candidate(g, q, session(dst, opts.threads))
        c.measured["qdq_nodes"] = count_qdq(dst)
        if not c.measured["qdq_nodes"]:
            c.reason = (
                f"nothing to quantise: no {'/'.join(QUANTIZED_OPS)} node away from the graph's inputs and outputs"
            )
            return c
        err = output_error(c.session, module_for(model, g, o.batch), spec_all[g], _spread(held_calls.get(g, []), 4))
        c.measured["output_error"] = err
        images = restored({**base, g: c.session})
        if isinstance(images, str):
            c.reason = images
            return c
        scores = score(images)
        c.measured["image"] = scores
        ok_err = err["rel_rms_mean"] <= lim.max_rel_rms and err["rel_rms_worst"] <= lim.max_rel_rms_worst
        c.accepted = ok_err and passes(scores, lim)
        c.reason = f"{error_text(err, lim)}; {image_text(scores, lim)} with only this graph in int8"
        if not ok_err:
            c.reason = "output error over the limit: " + c.reason
        elif not c.accepted:
            c.reason = "image quality under the limit: " + c.reason
        return c

    results: dict[str, Any] = {}
    for g in opts.graphs:
        c = candidate(g)
        log.info("int8: %s alone: %s", g, c.reason)
        if not c.accepted and c.stage_left and "image" in c.measured:
            c = _with_output_stage_fp32(c, candidate, f"all int8 it fails ({c.reason})")
        results[g] = c

    results["_combined"] = _combine(results, base, restored, score, opts, candidate)
    return results


def _with_output_stage_fp32(c: Candidate, candidate, why: str) -> Candidate:
    """``c``'s graph again with its output stage fp32, measured alone; ``why``: what ``c`` failed."""
    n = len(c.quantized.output_stage)
    p = candidate(c.graph, output_stage_fp32=True)
    p.measured["all_int8"] = {k: v for k, v in c.measured.items() if k in ("qdq_nodes", "output_error", "image")}
    p.reason = f"with its output stage fp32 ({n} nodes): {p.reason}. {why[0].upper()}{why[1:]}"
    log.info("int8: %s with its output stage fp32: %s", c.graph, p.reason)
    return p


def _combine(
    results: dict[str, Candidate], base: Mapping[str, Any], restored, score, opts: Int8Options, candidate
) -> dict[str, Any]:
    """All accepted graphs together must pass too; until they do, the weakest gives way: to its version
    with the output stage fp32 where it has one not yet tried, else to fp32."""
    while True:
        chosen = [c for c in results.values() if c.accepted]
        if not chosen:
            return {"graphs": []}
        if len(chosen) == 1:
            return {"graphs": [chosen[0].graph], **chosen[0].measured["image"]}
        images = restored({**base, **{c.graph: c.session for c in chosen}})
        lims = [opts.limits_for(c.graph) for c in chosen]
        lim = replace(  # the strictest image limits of the graphs combined
            opts.limits,
            min_ssim=max(x.min_ssim for x in lims),
            min_psnr_db=max(x.min_psnr_db for x in lims),
            max_lpips=min(x.max_lpips for x in lims),
        )
        scores = score(images) if not isinstance(images, str) else None
        if scores is not None and passes(scores, lim):
            return {"graphs": [c.graph for c in chosen], **scores}
        worst = chosen[weakest([c.measured for c in chosen])]
        together = images if scores is None else image_text(scores, lim)
        if worst.stage_left:
            why = f"all int8 it passes alone ({worst.reason}) but the int8 graphs {[c.graph for c in chosen]} "
            results[worst.graph] = _with_output_stage_fp32(worst, candidate, f"{why}together fail ({together})")
            continue
        worst.accepted = False
        worst.reason = (
            f"passes alone ({worst.reason}) but the int8 graphs {[c.graph for c in chosen]} together fail "
            f"({together}); the one that hurt the image most alone stays fp32"
        )
        log.info("int8: %s goes back to fp32: the combination fails", worst.graph)
