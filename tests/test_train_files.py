"""Training files: checkpoints are written atomically, and a damaged saved state is named in one line
on --resume instead of a traceback from safetensors or torch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from train.loop import TrainError, find_state, prune_checkpoints
from train.state import read_state
from train.synthetic import generate
from train.train import TrainConfig, main, train

REPO = Path(__file__).resolve().parents[1]
QUICK = {"val_every": 0, "val_count": 0, "save_every": 0, "log_every": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- class 8: checkpoints are written atomically -------------------------------------------------
def _kill_while_saving(model_path: Path, out: Path, after: str) -> subprocess.CompletedProcess:
    """A child process that saves a checkpoint and SIGKILLs itself right after writing ``after``."""
    code = textwrap.dedent(f"""
        import os, signal
        import train.checkpoint as ck
        real = ck.save_file
        def save_file(state, filename, *a, **k):
            real(state, filename, *a, **k)
            if filename.endswith({after!r}):
                os.kill(os.getpid(), signal.SIGKILL)
        ck.save_file = save_file
        model = ck.load_checkpoint({str(model_path)!r})
        ck.save_checkpoint(model, {str(out)!r}, {{"step": 2}})
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)


def test_killed_save_leaves_no_folder_that_looks_complete(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    out = run / "step-000002"
    res = _kill_while_saving(tiny_checkpoint, out, "garmnet.safetensors")
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
    assert not out.exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        read_config(out)
    leftovers = [p.name for p in run.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".step-000002.tmp-")
    prune_checkpoints(run, keep=1)  # the hidden folder is not a checkpoint
    assert (run / leftovers[0]).exists()
    # the next save of that name completes and removes the leftover
    model = load_checkpoint(tiny_checkpoint)
    save_checkpoint(model, out, {"step": 2})
    assert [p.name for p in run.iterdir()] == ["step-000002"]
    assert json.loads((out / "meta.json").read_text()) == {"step": 2}
    load_checkpoint(out)


def test_killed_overwrite_keeps_the_previous_checkpoint(tiny_checkpoint, tmp_path):
    out = tmp_path / "final"
    shutil.copytree(tiny_checkpoint, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = _kill_while_saving(tiny_checkpoint, out, "vae.safetensors")
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_save_cleans_up(tiny_model, tmp_path, monkeypatch):
    import train.checkpoint as ck

    def full_disk(state, filename, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tiny_model, tmp_path / "step-000001")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_every_file(tiny_model, tmp_path):
    out = tmp_path / "final"
    out.mkdir()
    (out / "stale.txt").write_text("from another run")
    save_checkpoint(tiny_model, out, {"step": 5})
    assert "stale.txt" not in {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # as mkdir makes it, not a private temporary folder


# --- class 9: a damaged state is named on --resume -----------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "syn"
    generate(root, 12, seed=0, size=(64, 48))
    return root


def cfg(data, out, **kw) -> TrainConfig:
    return TrainConfig(preset="tiny", data=(str(data),), out=str(out), **{**QUICK, **kw})


@pytest.fixture(scope="module")
def saved_run(data, tmp_path_factory):
    """A run stopped after 2 steps with its state saved."""
    run = tmp_path_factory.mktemp("saved") / "run"
    train(cfg(data, run, max_steps=2, batch_size=2))
    assert find_state(run) == run / "state"
    return run


def _state_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "state").iterdir() if p.is_file())


def test_a_whole_state_passes(saved_run):
    names = _state_files(saved_run)
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer.json"} <= set(names)
    assert read_state(saved_run / "state" / "trainer.json")["step"] == 2


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif how == "missing":
        path.unlink()
    elif how == "last byte":
        path.write_bytes(data[:-1])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "missing", "last byte"])
@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer.json"]
)
def test_damaged_state_file_is_named(saved_run, data, tmp_path, name, how):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    _damage(run / "state" / name, how)
    if name == "trainer.json" and how == "missing":
        pytest.skip("without trainer.json the state is incomplete and a new run starts (find_state)")
    with pytest.raises(TrainError, match=rf"--resume: state file {run / 'state' / name} (is|has|holds)"):
        train(cfg(data, run, max_steps=3, batch_size=2, resume=True))


def test_flipped_byte_in_a_torch_archive(saved_run, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    path = run / "state" / "optimizer.bin"
    raw = bytearray(path.read_bytes())
    start = raw.index(b"data.pkl") + 60  # inside the pickled structure
    raw[start] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TrainError, match=r"optimizer.bin is corrupt: its member '.*' fails its CRC-32 check"):
        train(cfg(data, run, max_steps=3, batch_size=2, resume=True))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step": -1}, r"has 'step' = -1; expected an integer >= 0"),
        ({"step": "2"}, r"has 'step' = '2'; expected an integer >= 0"),
        ({"step": None}, r"has 'step' = None"),
        ({"train_config": {}}, r"has 'train_config' = \{\}; expected an object with grad_accum >= 1"),
        ({"igr_config": {"format": "x"}}, r"has an igr_config that is not a model config"),
        ({"world_size": 2}, r"random_states_1.pkl is missing"),
        ({"elapsed": float("nan")}, r"has 'elapsed' = nan; expected a finite number"),
    ],
)
def test_trainer_json_keys(saved_run, data, tmp_path, change, message):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    path = run / "state" / "trainer.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(TrainError, match=message):
        train(cfg(data, run, max_steps=3, batch_size=2, resume=True))


def test_safetensors_header_that_lies(saved_run, tmp_path):
    from train.state import check_safetensors

    path = tmp_path / "x.safetensors"
    src = (saved_run / "state" / "model.safetensors").read_bytes()
    n = int.from_bytes(src[:8], "little")
    header = json.loads(src[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [*header[name]["shape"], 2]
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + src[8 + n :])
    with pytest.raises(TrainError, match=rf"has a corrupt header entry for tensor '{name}'"):
        check_safetensors(path)
    path.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    with pytest.raises(TrainError, match=r"is truncated: its header declares 1152921504606846976 bytes"):
        check_safetensors(path)


def test_damaged_state_is_one_line_from_the_command_line(saved_run, data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    _damage(run / "state" / "model.safetensors", "truncated")
    args = ["--preset", "tiny", "--data", str(data), "--out", str(run), "--max-steps", "3", "--batch-size", "2"]
    rc = main([*args, "--val-count", "0", "--val-every", "0", "--save-every", "0", "--resume", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --resume: state file {run / 'state' / 'model.safetensors'} is truncated")


def test_resume_of_a_whole_state_still_works(saved_run, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    assert train(cfg(data, run, max_steps=3, batch_size=2, resume=True)).step == 3
