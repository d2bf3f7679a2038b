"""A local SegFormer human parser -> the ``parser`` graph of an engine directory.

    python export/build_engines.py --checkpoint CKPT --out DIR --parser SEGFORMER_DIR \\
        [--parser-labels fashn|atr|lip|igr|MAP.json] [--parser-size HxW]

``SEGFORMER_DIR`` is a Hugging Face folder of a ``SegformerForSemanticSegmentation``
(``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, optionally
``preprocessor_config.json``); nothing is downloaded. The graph takes the normalised photo
(``image``, 1 x 3 x Hp x Wp) and returns the decoder's logits (``logits``, 1 x L x Hp/4 x Wp/4);
``igr_sdk._parse`` does the rest in numpy. Its manifest entry records the label names and, per
category, the labels whose union is the garment mask.

Labels: read from ``config.json``'s ``id2label`` and matched to a known label set (below), or named
with ``--parser-labels``, or given by a mapping file::

    {"labels": ["background", "hat", ...],            # optional when config.json names them
     "categories": {"upper": ["Upper-clothes"], "lower": ["Skirt", "Pants"], "full": ["Dress"]}}

where a category lists label names or ids. Input size and normalisation come from
``preprocessor_config.json`` (else the label set's training size, else SegFormer's 512 x 512 and
ImageNet statistics); ``--parser-size`` overrides the size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from export import onnx_export
from export.build import BuildError
from export.graphs import GraphSpec, TensorSpec
from igr_sdk.contract import parse_resolution
from igr_sdk.engines import sha256_file
from train.synthetic import PARTS

log = logging.getLogger(__name__)

PARSER_FILE = "parser.onnx"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = (512, 512)  # SegformerImageProcessor's default
TOLERANCE = 1e-4  # fp32 parity, relative to the largest logit (plus the same atol)


class ParserError(BuildError):
    """A parser folder, label mapping or option that cannot be exported; the message says what to do."""


@dataclass(frozen=True)
class LabelSet:
    labels: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]  # category -> the labels whose union is its garment
    size: tuple[int, int] | None = None  # (H, W) it was trained at, for folders that do not say


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# This project's label maps name every garment by its kind (train/synthetic.py); a category's mask is
# the union below, each category's own label first. Chosen on a validation seed (777, 300 pairs, not
# the held-out test seed): on a small figure the parser sometimes calls the top a full garment, and
# the halves of a dress a top and a skirt; the unions take upper IoU from 0.874 to 0.903 (its four
# "no garment found" cases gone) and full from 0.914 to 0.920. Lower keeps its own label: of its true
# pixels the parser calls 0.4% a full garment and 0.6% a top.
IGR_CATEGORIES = {
    "upper": ("upper_garment", "full_garment"),
    "lower": ("lower_garment",),
    "full": ("full_garment", "upper_garment", "lower_garment"),
}

# The public fashion parsers, by the label names their config.json carries.
LABEL_SETS = {
    # fashn-ai/fashn-human-parser: SegFormer-B4 fine-tuned at 576 x 384
    "fashn": LabelSet(
        _names(
            "background face hair top dress skirt pants belt bag hat scarf glasses arms hands legs feet torso jewelry"
        ),
        {"upper": ("top",), "lower": ("skirt", "pants"), "full": ("dress",)},
        (576, 384),
    ),
    # ATR labels: mattmdjaga/segformer_b2_clothes, segformer_b0_clothes and their fine-tunes
    "atr": LabelSet(
        _names(
            "Background Hat Hair Sunglasses Upper-clothes Skirt Pants Dress Belt Left-shoe Right-shoe Face "
            "Left-leg Right-leg Left-arm Right-arm Bag Scarf"
        ),
        {"upper": ("Upper-clothes",), "lower": ("Skirt", "Pants"), "full": ("Dress",)},
    ),
    # LIP labels (Look Into Person)
    "lip": LabelSet(
        _names(
            "Background Hat Hair Glove Sunglasses Upper-clothes Dress Coat Socks Pants Jumpsuits Scarf Skirt "
            "Face Left-arm Right-arm Left-leg Right-leg Left-shoe Right-shoe"
        ),
        {"upper": ("Upper-clothes", "Coat"), "lower": ("Pants", "Skirt"), "full": ("Dress", "Jumpsuits")},
    ),
    # this project's parser, trained on synthetic label maps (train/train_parser.py)
    "igr": LabelSet(PARTS, IGR_CATEGORIES, (256, 192)),
}


@dataclass(frozen=True)
class ParserOptions:
    folder: Path
    labels: str | Path | None = None  # a LABEL_SETS name or a mapping file; None: from config.json
    size: tuple[int, int] | None = None  # (H, W) input size; None: the folder's or the label set's
    min_component: float = 0.05  # pieces below this fraction of the largest one are dropped
    max_hole: float = 0.01  # holes below this fraction of the mask are filled


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]
    categories: dict[str, list[int]]
    source: str  # where the names and the mapping came from


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "-", name.strip().lower())


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ParserError(f"{what} {str(path)!r} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ParserError(f"{what} {str(path)!r}: expected a JSON object, got {type(data).__name__}")
    return data


def config_labels(config: dict) -> tuple[str, ...] | None:
    """The label names of ``config.json``'s ``id2label``; None when it has none or transformers' defaults."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        pairs = sorted((int(k), str(v)) for k, v in id2label.items())
    except ValueError:
        raise ParserError(f"config.json's id2label has keys that are not label ids: {sorted(id2label)[:5]}") from None
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise ParserError(f"config.json's id2label ids are not 0..{len(pairs) - 1}: {[k for k, _ in pairs]}")
    names = tuple(v for _, v in pairs)
    if all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names


def _ids(names: tuple[str, ...], wanted: list, where: str) -> list[int]:
    index = {_norm(n): i for i, n in enumerate(names)}
    out = []
    for w in wanted:
        if isinstance(w, int) and not isinstance(w, bool) and 0 <= w < len(names):
            out.append(w)
        elif isinstance(w, str) and _norm(w) in index:
            out.append(index[_norm(w)])
        else:
            raise ParserError(f"{where}: {w!r} is neither one of the labels {list(names)} nor an id below {len(names)}")
    if not out or len(set(out)) != len(out):
        raise ParserError(f"{where}: expected a non-empty list of distinct labels, got {wanted!r}")
    return out


def resolve_labels(config: dict, num_labels: int, choice: str | Path | None) -> tuple[Labels, LabelSet | None]:
    """The label names and per-category label ids; also the known label set used, if any."""
    named = config_labels(config)
    if choice is not None and str(choice) not in LABEL_SETS:
        path = Path(choice)
        if not path.is_file():
            raise ParserError(f"--parser-labels {str(choice)!r} is not a mapping file nor one of {sorted(LABEL_SETS)}")
        mapping = _read_json(path, "label mapping")
        names = mapping.get("labels", named)
        if names is None:
            raise ParserError(f"{path}: config.json names no labels, so the mapping file must list them under 'labels'")
        names = tuple(str(n) for n in names)
        cats = mapping.get("categories")
        if not isinstance(cats, dict) or not cats:
            raise ParserError(f"{path}: expected 'categories': {{'upper': [labels], 'lower': [...], 'full': [...]}}")
        labels = Labels(names, {c: _ids(names, list(v), f"{path}: {c}") for c, v in cats.items()}, str(path))
        known = None
    else:
        known_name = str(choice) if choice is not None else _match(named, num_labels)
        known = LABEL_SETS[known_name]
        if named is not None and [_norm(n) for n in named] != [_norm(n) for n in known.labels]:
            raise ParserError(
                f"config.json's labels {list(named)} are not the {known_name!r} labels {list(known.labels)}; "
                "give a mapping file with --parser-labels MAP.json"
            )
        cats = {c: _ids(known.labels, list(v), known_name) for c, v in known.categories.items()}
        labels = Labels(named or known.labels, cats, known_name)
    if len(labels.names) != num_labels:
        raise ParserError(f"the parser has {num_labels} output labels but {labels.source} names {len(labels.names)}")
    return labels, known


def _match(named: tuple[str, ...] | None, num_labels: int) -> str:
    if named is None:
        raise ParserError(
            f"config.json names none of its {num_labels} labels; say which they are with --parser-labels "
            f"({', '.join(sorted(LABEL_SETS))} or a mapping file)"
        )
    for name, s in LABEL_SETS.items():
        if [_norm(n) for n in named] == [_norm(n) for n in s.labels]:
            return name
    raise ParserError(
        f"config.json's labels {list(named)} match no known parser ({', '.join(sorted(LABEL_SETS))}); give a "
        'mapping file with --parser-labels MAP.json: {"categories": {"upper": [...], "lower": [...], "full": [...]}}'
    )


def preprocessing(folder: Path, known: LabelSet | None, size: tuple[int, int] | None) -> dict:
    """Input size (H, W), mean and std on RGB in [0, 1], from the folder's preprocessor_config.json."""
    p = folder / "preprocessor_config.json"
    cfg = _read_json(p, "preprocessor config") if p.is_file() else {}
    folder_size = cfg.get("size") if cfg.get("do_resize", True) else None
    if size is None and isinstance(folder_size, dict) and {"height", "width"} <= set(folder_size):
        size = (int(folder_size["height"]), int(folder_size["width"]))
    size = size or (known.size if known else None) or DEFAULT_SIZE
    if min(size) < 32:
        raise ParserError(f"parser input size {size[0]}x{size[1]} is too small; expected at least 32x32")
    scale = 255.0 * float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 255.0
    if cfg.get("do_normalize", True):
        mean = [float(m) / scale for m in cfg.get("image_mean", IMAGENET_MEAN)]
        std = [float(s) / scale for s in cfg.get("image_std", IMAGENET_STD)]
    else:
        mean, std = [0.0] * 3, [1.0 / scale] * 3
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ParserError(f"{p}: image_mean and image_std must hold 3 values each, std above 0; got {mean}, {std}")
    return {"size": list(size), "resize": "stretch", "mean": mean, "std": std}


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` -> (H, W)."""
    h, w = parse_resolution(text, "parser size", "576x384")
    if min(h, w) < 32:
        raise ValueError(f"{text!r} is too small; expected at least 32x32")
    return h, w


def _read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise ParserError(f"--parser {str(folder)!r} is not a folder; expected a Hugging Face SegFormer folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ParserError(f"--parser {str(folder)!r} has no config.json; expected a Hugging Face SegFormer folder")
    config = _read_json(cfg_path, "parser config")
    if config.get("model_type") != "segformer":
        raise ParserError(
            f"--parser {str(folder)!r} holds a {config.get('model_type')!r} model; "
            "expected a SegformerForSemanticSegmentation (model_type 'segformer')"
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ParserError(f"--parser {str(folder)!r} has no weights; expected one of {list(WEIGHT_FILES)}")
    return config


def preflight(options: ParserOptions) -> None:
    """Check the folder, its labels and the options without loading any weights."""
    for name, value in (("min_component", options.min_component), ("max_hole", options.max_hole)):
        if not 0.0 <= value <= 1.0:
            raise ParserError(f"parser {name} must be in [0, 1], got {value!r}")
    folder = Path(options.folder)
    config = _read_config(folder)
    num_labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels")
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ParserError(f"{folder / 'config.json'} gives neither id2label nor num_labels")
    _, known = resolve_labels(config, num_labels, options.labels)
    preprocessing(folder, known, options.size)


def load_segformer(folder: Path):
    """The folder's ``SegformerForSemanticSegmentation`` in eval mode, and its config.json."""
    config = _read_config(folder)
    from transformers import SegformerForSemanticSegmentation

    model = SegformerForSemanticSegmentation.from_pretrained(folder, local_files_only=True)
    return model.eval().float(), config


class ParserGraph(nn.Module):
    """The exported graph: normalised image -> the decode head's logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=image).logits


def _strip_node_metadata(files: list[Path]) -> None:
    """Drop the exporter's per-node provenance (module paths, FX nodes): about a third of a small graph."""
    import onnx

    if len(files) > 1:  # weights in a side file: leave the pair as written
        return
    model = onnx.load(str(files[0]))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(files[0]))


def _key(folder: Path, options: ParserOptions, opset: int) -> str:
    files = sorted(f.name for f in folder.iterdir() if f.suffix in (".json", ".safetensors", ".bin"))
    parts = {f: sha256_file(folder / f) for f in files}
    if options.labels is not None and str(options.labels) not in LABEL_SETS:
        parts["labels"] = sha256_file(Path(options.labels))
    tools = {}
    for n in ("torch", "transformers", "onnx", "onnxscript"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tools[n] = metadata.version(n)
    spec = {
        "files": parts,
        "labels": str(options.labels),
        "size": options.size,
        "opset": opset,
        "post": [options.min_component, options.max_hole],
        "tools": tools,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _unchanged(out: Path, entry: dict | None, key: str) -> bool:
    if not isinstance(entry, dict) or entry.get("key") != key:
        return False
    files = [entry, *entry.get("data", [])]
    return all((out / f["file"]).is_file() and sha256_file(out / f["file"]) == f["sha256"] for f in files)


def build_parser(options: ParserOptions, out: Path, previous: dict | None = None, opset: int = 23, verify=True) -> dict:
    """Export the parser into ``out`` (unless ``previous`` is its up-to-date entry); returns the manifest entry."""
    preflight(options)
    folder = Path(options.folder)
    key = _key(folder, options, opset)
    if _unchanged(out, previous, key):
        log.info("parser: up to date, kept")
        return previous
    model, config = load_segformer(folder)
    labels, known = resolve_labels(config, model.config.num_labels, options.labels)
    pre = preprocessing(folder, known, options.size)
    h, w = pre.pop("size")
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    graph = ParserGraph(model)
    with torch.no_grad():
        expected = graph(example).float().numpy()
    spec = GraphSpec(
        "parser",
        (TensorSpec("image", (1, 3, h, w), "float32"),),
        (TensorSpec("logits", tuple(expected.shape), "float32"),),
        (),
    )
    files = onnx_export.export_onnx(graph, spec, {"image": example}, out / PARSER_FILE, opset)
    _strip_node_metadata(files)
    if verify:
        err, scale = onnx_export.max_error(files[0], spec, {"image": example}, [expected], ["CPUExecutionProvider"])
        limit = TOLERANCE + TOLERANCE * scale
        log.info("    parser: max |onnx - torch| = %.3g (logits up to %.3g, limit %.3g)", err, scale, limit)
        if not err <= limit:
            raise ParserError(f"parser: {files[0].name} differs from torch by {err:.3g} (limit {limit:.3g})")
    main, *data = files
    return {
        "file": main.relative_to(out).as_posix(),
        "sha256": sha256_file(main),
        "data": [{"file": d.relative_to(out).as_posix(), "sha256": sha256_file(d)} for d in data],
        "precision": "fp32",
        "inputs": [s.to_dict() for s in spec.inputs],
        "outputs": [s.to_dict() for s in spec.outputs],
        "labels": list(labels.names),
        "categories": labels.categories,
        "preprocess": pre,
        "postprocess": {"min_component": options.min_component, "max_hole": options.max_hole},
        "source": {
            "path": str(folder.resolve()),
            "name": config.get("_name_or_path") or folder.name,
            "labels_from": labels.source,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "key": key,
    }


def add_parser(out: Path, options: ParserOptions, opset: int = 23, verify: bool = True) -> dict:
    """Export a parser into an existing engine directory and list it in its manifest.json."""
    path = out / "manifest.json"
    manifest = _read_json(path, "manifest")
    manifest["parser"] = build_parser(options, out, manifest.get("parser"), opset, verify)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return manifest
