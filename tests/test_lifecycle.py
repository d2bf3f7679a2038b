"""Restorer lifecycle and backend choice: close / with, TensorRT options through from_dir, the
"auto" fallback said in the log. Runs on the bundled default model (ONNX Runtime, CPU)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from igr_sdk import EngineError, Restorer
from igr_sdk import _backend as B
from igr_sdk import _tensorrt as T
from igr_sdk.engines import default_engine_dir, read_manifest


@pytest.fixture
def person_mask():
    person = np.full((256, 192, 3), 200, dtype=np.uint8)
    mask = np.zeros((256, 192), dtype=bool)
    mask[60:180, 40:150] = True
    return person, mask


def test_with_block_closes_the_backend(person_mask):
    person, mask = person_mask
    with Restorer.from_dir(backend="onnxruntime", threads=1) as r:
        assert r.restore(person, mask, steps=1, seed=0).image.size == (192, 256)
        backend = r.backend
    with pytest.raises(EngineError, match="this Restorer is closed"):
        r.restore(person, mask, steps=1, seed=0)
    with pytest.raises(EngineError, match="is closed"):  # the backend itself refuses too
        backend.run("vae_decoder", {})
    r.close()  # idempotent


def test_close_hands_off_to_the_backend_once():
    r = Restorer.from_dir(backend="onnxruntime", threads=1)
    calls = []
    real = r.backend.close
    r.backend.close = lambda: (calls.append(1), real())
    r.close()
    r.close()
    assert calls == [1]


class _StubBackend:
    name = "stub"
    reentrant = True

    def __init__(self, **options):
        self.options = options
        self.closed = False

    def close(self):
        self.closed = True


def test_tensorrt_options_reach_the_backend(monkeypatch):
    opened = []

    def fake_open(manifest, device=None, **options):
        opened.append(_StubBackend(device=device, **options))
        return opened[-1]

    monkeypatch.setattr(T.TensorRTBackend, "open", staticmethod(fake_open))
    r = Restorer.from_dir(backend="tensorrt", device=0, cuda_graph=True, pinned=True)
    assert opened[0].options == {"device": 0, "cuda_graph": True, "pinned": True}
    with r:
        pass
    assert opened[0].closed


def test_tensorrt_options_are_refused_by_onnxruntime():
    with pytest.raises(EngineError, match="cuda_graph are TensorRT options"):
        Restorer.from_dir(backend="onnxruntime", cuda_graph=True)


def test_a_restorer_that_cannot_be_built_closes_its_backend(monkeypatch):
    stub = _StubBackend()

    def refuse(self, *args):
        raise EngineError("bad manifest")

    monkeypatch.setattr("igr_sdk._restorer.open_backend", lambda *a, **k: stub)
    monkeypatch.setattr(Restorer, "__init__", refuse)
    with pytest.raises(EngineError, match="bad manifest"):
        Restorer.from_dir()
    assert stub.closed


def _with_tensorrt_plans(monkeypatch):
    manifest = read_manifest(default_engine_dir())
    monkeypatch.setattr(type(manifest), "engine_ids", lambda self: {"onnxruntime-cpu", "tensorrt-sm_90"})
    return manifest


def test_auto_says_why_it_chose_onnxruntime(caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="igr_sdk._backend"):
        Restorer.from_dir(backend="auto", threads=1).close()
    assert "chose ONNX Runtime: the engine directory has no TensorRT plans" in caplog.text

    manifest = _with_tensorrt_plans(monkeypatch)
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name: None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="igr_sdk._backend"):
        B.open_backend(manifest, "auto", threads=1).close()
    assert "chose ONNX Runtime: tensorrt is not installed" in caplog.text


def test_auto_falls_back_with_the_tensorrt_error(caplog, monkeypatch):
    manifest = _with_tensorrt_plans(monkeypatch)
    monkeypatch.setattr(B, "_tensorrt_unavailable", lambda m: None)  # as if tensorrt were installed

    def fail(manifest, device=None, **options):
        raise EngineError("no TensorRT engine for this GPU, NVIDIA A10 (sm_86)")

    monkeypatch.setattr(T.TensorRTBackend, "open", staticmethod(fail))
    with caplog.at_level(logging.WARNING, logger="igr_sdk._backend"):
        backend = B.open_backend(manifest, "auto", threads=1, cuda_graph=True)
    assert backend.name == "onnxruntime-cpu"
    backend.close()
    text = caplog.text
    assert "TensorRT could not open its plans: no TensorRT engine for this GPU, NVIDIA A10 (sm_86)" in text
    assert "cuda_graph apply to TensorRT only" in text
    with pytest.raises(EngineError, match="NVIDIA A10"):
        B.open_backend(manifest, "tensorrt")
