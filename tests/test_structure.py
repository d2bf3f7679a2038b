"""The project's structure, read from the source: train/, export/, benchmarks/ and scripts/ use igr_sdk's
public names only, the contract's constants are defined once, train/ has no import cycle and the
training loop is made of functions a reader can hold in mind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("train", "export", "benchmarks", "scripts")  # everything outside igr_sdk that the project ships
SOURCES = ("igr_sdk", *TOOLS)


def _files(*folders: str) -> list[Path]:
    return sorted(p for d in folders for p in (REPO / d).rglob("*.py") if "__pycache__" not in p.parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _private(module: str) -> bool:
    """``igr_sdk._x`` or anything below it."""
    parts = module.split(".")
    return parts[0] == "igr_sdk" and any(p.startswith("_") for p in parts[1:])


def private_uses(path: Path, root: Path = REPO) -> list[str]:
    """Every place ``path`` reaches a private name of igr_sdk: ``from igr_sdk._x import``, ``import
    igr_sdk._x``, ``from igr_sdk[.x] import _y`` and ``igr_sdk._x`` as an attribute."""
    found = []
    for node in ast.walk(_tree(path)):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "igr_sdk":
            if _private(node.module):
                found.append(f"{where} from {node.module} import ...")
            found += [f"{where} from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            if isinstance(base, ast.Name) and base.id == "igr_sdk":
                found.append(f"{where} igr_sdk.{node.attr}")
    return found


def test_tools_use_only_public_names_of_igr_sdk():
    offenders = [use for path in _files(*TOOLS) for use in private_uses(path)]
    assert not offenders, "private igr_sdk names used outside igr_sdk:\n" + "\n".join(offenders)


def test_the_scan_sees_private_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import igr_sdk._cli\nfrom igr_sdk._preprocess import fit\nfrom igr_sdk import _scheduler\n"
        "from igr_sdk.preprocess import fit as ok\nimport igr_sdk\nx = igr_sdk._default\n"
    )
    assert [u.split(" ", 1)[1] for u in private_uses(bad, tmp_path)] == [
        "import igr_sdk._cli",
        "from igr_sdk._preprocess import ...",
        "from igr_sdk import _scheduler",
        "igr_sdk._default",
    ]


# the contract's names, and where each is defined (igr_sdk.contract, or the module that owns it)
SHARED = {
    "SCHEMA": "igr_sdk/contract.py",
    "GRAPHS": "igr_sdk/contract.py",
    "CATEGORIES": "igr_sdk/contract.py",
    "CLIP_SIZE": "igr_sdk/contract.py",
    "CLIP_MEAN": "igr_sdk/contract.py",
    "CLIP_STD": "igr_sdk/contract.py",
    "LATENT_CHANNELS": "igr_sdk/contract.py",
    "PREDICTION_TYPES": "igr_sdk/_scheduler.py",
}
# values whose copies under another name would drift the same way
SHARED_VALUES = {
    ("image_encoder", "vae_encoder", "garmnet", "denoiser", "vae_decoder"): "GRAPHS",
    ("upper", "lower", "full"): "CATEGORIES",
    ("epsilon", "v_prediction"): "PREDICTION_TYPES",
}


def _assignments(tree: ast.Module):
    """Module-level ``NAME = value`` (plain or annotated)."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    yield t.id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            yield node.target.id, node.value


def test_each_shared_constant_is_defined_once():
    defined: dict[str, list[str]] = {}
    for path in _files(*SOURCES):
        rel = path.relative_to(REPO).as_posix()
        for name, value in _assignments(_tree(path)):
            if name in SHARED:
                defined.setdefault(name, []).append(rel)
                continue
            try:
                literal = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(literal, (tuple, list)) and tuple(literal) in SHARED_VALUES:
                defined.setdefault(SHARED_VALUES[tuple(literal)], []).append(f"{rel} ({name})")
    expected = {name: [where] for name, where in SHARED.items()}
    assert defined == expected


def test_resolutions_are_parsed_in_one_place():
    """``"HxW"`` text is split only by igr_sdk.contract (export/readiness.py splits NAME=1x4x128x96 shapes)."""
    splitting = []
    for path in _files(*SOURCES):
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "split"
                and [getattr(a, "value", None) for a in node.args] == ["x"]
            ):
                splitting.append(path.relative_to(REPO).as_posix())
    assert sorted(set(splitting)) == ["export/readiness.py"]


def _train_imports(path: Path) -> set[str]:
    """The train.* modules ``path`` imports anywhere (function-level imports included)."""
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("train.")}


def test_train_modules_import_no_cycle():
    modules = {f"train.{p.stem}": p for p in (REPO / "train").glob("*.py") if p.stem != "__init__"}
    graph = {m: _train_imports(p) & set(modules) - {m} for m, p in modules.items()}
    assert "train.train" not in graph["train.loop"] and "train.loop" not in graph["train.state"]

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, m, (m,)))]
    assert not cycles, cycles


@pytest.mark.parametrize("path", ["train/loop.py"])
def test_no_function_is_over_80_lines(path):
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(_tree(REPO / path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long
