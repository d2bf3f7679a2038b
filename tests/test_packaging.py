"""Packaging: the wheel holds the SDK only and builds without a warning; the tools in train/, export/
and benchmarks/ run from the repository without being installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "runs", "out"}


def _checkout_files() -> list[str]:
    """The files a fresh checkout has (tracked, plus new files git does not ignore)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but caches
        return [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file() and not IGNORED_DIRS & set(p.relative_to(REPO).parts) and ".egg-info" not in str(p)
        ]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout, with the build's output."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    files = _checkout_files()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)]
    res = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = dist.glob("igr_sdk-*.whl")
    return path, res.stdout + res.stderr, files


@pytest.mark.slow
def test_wheel_holds_the_sdk_only(wheel):
    path, _, files = wheel
    names = zipfile.ZipFile(path).namelist()
    dist_info = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    sdk = [n for n in names if n not in dist_info]
    assert sdk and all(n.startswith("igr_sdk/") for n in sdk), sorted({n.split("/")[0] for n in sdk})
    assert {n.split("/")[0] for n in dist_info} == {"igr_sdk-0.1.0.dist-info"}
    # every module of the package and every file of the embedded default model
    expected = {f for f in files if f.startswith("igr_sdk/") and (f.endswith(".py") or "/models/default/" in f)}
    assert expected <= set(sdk), sorted(expected - set(sdk))
    assert "igr_sdk/models/default/manifest.json" in sdk and "igr_sdk/scale/__init__.py" in sdk
    entry_points = zipfile.ZipFile(path).read("igr_sdk-0.1.0.dist-info/entry_points.txt").decode()
    scripts = {line.split("=")[0].strip() for line in entry_points.splitlines() if "=" in line}
    assert "igr-restore" in scripts and all(s.startswith("igr-") for s in scripts)
    assert all(line.split("=")[1].strip().startswith("igr_sdk") for line in entry_points.splitlines() if "=" in line)


@pytest.mark.slow
def test_wheel_builds_without_a_packaging_warning(wheel):
    _, output, _ = wheel
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


# Strips an editable installation's import hook, so only what the scripts do themselves can find
# the repository's packages (an older `pip install -e .` of this project mapped train/ and export/).
_NO_EDITABLE = (
    'import sys\nsys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]\n'
)


@pytest.mark.slow
@pytest.mark.parametrize("as_module", [False, True], ids=["file", "module"])
def test_tools_run_from_the_repository_without_installation(tmp_path, as_module):
    """``python train/curate.py`` from anywhere and ``python -m train.curate`` from the repository root
    import the train package (numpy only, so this stays cheap) with no installation of it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_NO_EDITABLE)
    env = {**os.environ, "PYTHONPATH": str(hook), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import train"], env=env, cwd=tmp_path, capture_output=True)
    assert probe.returncode != 0, "train/ is importable from an installation"
    run = ["-m", "train.curate"] if as_module else [str(REPO / "train" / "curate.py")]
    cmd = [sys.executable, *run, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "list.txt")]
    res = subprocess.run(cmd, env=env, cwd=REPO if as_module else tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
