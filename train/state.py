"""A run's saved training state (``RUN/state/``), checked file by file before ``--resume`` loads it.

accelerate writes the state as ``model.safetensors`` (or ``pytorch_model.bin``, or a DeepSpeed
``pytorch_model/`` folder), ``optimizer.bin``, ``scheduler.bin``, ``random_states_<rank>.pkl`` and,
for objects registered for checkpointing, ``custom_checkpoint_<i>.pkl``; ``train/loop.py`` adds
``trainer.json`` last. Without these checks a truncated or damaged file surfaces as a traceback from
safetensors or torch deep inside ``load_state`` (or, for the random states, is silently skipped, and
the resumed run is no longer exact). Here every file is checked for what its format allows without
loading it:

- ``trainer.json``: JSON with the keys the loop reads, of the right types;
- ``*.safetensors``: the header parses and describes exactly the bytes the file holds;
- ``*.bin`` / ``*.pkl`` / ``*.pt``: a complete torch zip archive whose members pass their CRC-32.

A changed byte inside safetensors tensor data cannot be seen this way (the format has no checksum).
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

from train.config import IGRConfig
from train.trainconfig import TrainError

SAFETENSORS_ITEM_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
TORCH_ARCHIVES = (".bin", ".pkl", ".pt", ".pth")
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
DEEPSPEED_DIR = "pytorch_model"


def read_state(trainer_file: Path) -> dict[str, Any]:
    """``trainer.json`` of a saved state, after every file of the state folder has been checked.

    Raises ``TrainError`` in one line naming the first damaged or missing file.
    """
    trainer = _read_trainer(trainer_file)
    folder = trainer_file.parent
    _require_files(folder, trainer)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".safetensors":
            check_safetensors(path)
        elif path.suffix in TORCH_ARCHIVES:
            check_torch_archive(path)
        elif path.suffix == ".json" and path != trainer_file:
            _read_json(path)
    return trainer


def _fail(path: Path, problem: str) -> Exception:
    return TrainError(
        f"--resume: state file {path} {problem}; it was damaged after it was written: restore the run "
        "folder from a backup, or start a new run with another --out"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise _fail(path, f"is not valid JSON ({e})") from None
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror or e})") from None


def _read_trainer(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise _fail(path, f"holds {type(data).__name__}, expected a JSON object")
    for key, required, expected, ok in TRAINER_KEYS:
        if key not in data:
            if required:
                raise _fail(path, f"has no {key!r}; expected {expected}")
        elif not ok(data[key]):
            raise _fail(path, f"has {key!r} = {_short(data[key])}; expected {expected}")
    try:
        IGRConfig.from_dict(data["igr_config"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise _fail(path, f"has an igr_config that is not a model config ({e})") from None
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# (key, required, what is expected, check) for the keys of trainer.json that the loop reads
TRAINER_KEYS = (
    ("step", True, "an integer >= 0", lambda v: _is_int(v) and v >= 0),
    ("train_config", True, "an object with grad_accum >= 1", lambda v: isinstance(v, dict) and _grad_accum(v) >= 1),
    ("igr_config", True, "an object", lambda v: isinstance(v, dict)),
    ("elapsed", False, "a finite number", lambda v: _is_number(v) and math.isfinite(v)),
    ("world_size", False, "an integer >= 1", lambda v: _is_int(v) and v >= 1),
)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _grad_accum(train_config: dict[str, Any]) -> int:
    v = train_config.get("grad_accum")
    return v if _is_int(v) else 0


def _require_files(folder: Path, trainer: dict[str, Any]) -> None:
    deepspeed = (folder / DEEPSPEED_DIR).is_dir()
    if not deepspeed and not any((folder / m).is_file() for m in MODEL_FILES):
        raise _fail(folder / MODEL_FILES[0], "is missing (and so is pytorch_model.bin)")
    required = ["scheduler.bin"] if deepspeed else ["optimizer.bin", "scheduler.bin"]
    required += [f"random_states_{rank}.pkl" for rank in range(trainer.get("world_size", 1))]
    if trainer["train_config"].get("ema_decay"):
        required.append("custom_checkpoint_0.pkl")  # the averaged weights, registered for checkpointing
    for name in required:
        if not (folder / name).is_file():
            raise _fail(folder / name, "is missing")


def check_safetensors(path: Path) -> None:
    """The 8-byte header length, the JSON header, and tensor offsets that cover the file exactly."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(path, f"is truncated: {size} bytes, shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise _fail(path, f"is truncated: its header declares {n} bytes, the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise _fail(path, f"has a corrupt header ({e})") from None
    if not isinstance(header, dict):
        raise _fail(path, "has a corrupt header (not a JSON object)")
    expected = 8 + n + _data_end(path, header)
    if size < expected:
        raise _fail(path, f"is truncated: {size} bytes, its header describes {expected}")
    if size > expected:
        raise _fail(path, f"has {size - expected} bytes past the tensors its header describes")


def _data_end(path: Path, header: dict[str, Any]) -> int:
    """Where the last tensor ends, checking each tensor's offsets against its dtype and shape."""
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = t["data_offsets"]
            count = math.prod(t["shape"])
            item = SAFETENSORS_ITEM_BYTES[t["dtype"]]
            consistent = 0 <= begin <= stop and stop - begin == count * item
        except (KeyError, TypeError, ValueError):
            consistent = False
        if not consistent:
            raise _fail(path, f"has a corrupt header entry for tensor {name!r}")
        end = max(end, stop)
    return end


def check_torch_archive(path: Path) -> None:
    """A complete zip archive (torch.save's format) whose members all pass their CRC-32."""
    try:
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error) as e:
        raise _fail(path, f"is truncated or not a torch archive ({e})") from None
    if damaged is not None:
        raise _fail(path, f"is corrupt: its member {damaged!r} fails its CRC-32 check")
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise _fail(path, "is not a torch archive: it has no data.pkl")
