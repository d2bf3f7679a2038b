"""torch -> ONNX with the dynamo exporter, fp16 preparation, ONNX Runtime offline optimisation
and the parity check that every graph passes before a build calls it done."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.graphs import GraphSpec, call_args

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave room for the graph itself


class FP32GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are computed in fp32: fp16 sums of squares overflow at SD scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return nn.functional.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm in fp32: TensorRT honours LayerNormalization's stash_type only in weakly typed builds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def to_half(model: nn.Module) -> nn.Module:
    """fp16 weights and activations, normalisation statistics in fp32 (strongly typed in the graph)."""
    model.half()
    for m in model.modules():
        if type(m) is nn.GroupNorm:
            m.__class__ = FP32GroupNorm
        elif type(m) is nn.LayerNorm:
            m.__class__ = FP32LayerNorm
    return model


def export_onnx(
    module: nn.Module, spec: GraphSpec, inputs: dict[str, torch.Tensor], path: Path, opset: int = 23
) -> list[Path]:
    """Write ``path`` (plus external data when large); returns every file written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = n_bytes > EXTERNAL_DATA_BYTES
    # the exporter and its optimiser narrate every pass on stdout; a build reports through logging instead
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            call_args(spec, inputs),
            dynamo=True,
            opset_version=opset,
            input_names=[s.name for s in spec.inputs],
            output_names=[s.name for s in spec.outputs],
            optimize=True,
            verbose=False,
        )
    for old in _files_of(path):
        old.unlink()
    program.save(path, external_data=external)
    files = _files_of(path)
    log.info("exported %s (%s)", path.name, ", ".join(f"{f.name} {f.stat().st_size / 1e6:.1f} MB" for f in files))
    return files


def _files_of(path: Path) -> list[Path]:
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


def torch_outputs(module: nn.Module, spec: GraphSpec, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*call_args(spec, inputs))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.float().numpy() for o in outs]


def session(path: Path, providers: list[str], optimized_out: Path | None = None, level: str = "extended"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", optimized_out.name + ".data"
        )
        # past protobuf's 2 GiB every weight goes to the side file; below it the model stays one file
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            "1024" if _size(path) > EXTERNAL_DATA_BYTES else str(2**62),
        )
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in _files_of(path))


def optimize_for_ort(path: Path, out: Path, providers: list[str]) -> list[Path]:
    """ONNX Runtime's offline-optimised model (extended level: portable across machines of an EP).
    For the CPU its attention nodes first become ONNX Runtime's flash attention (export.ort_attention)
    and its group norms instance norms (export.ort_groupnorm)."""
    for old in _files_of(out):
        old.unlink()
    if providers[0] != "CPUExecutionProvider":
        session(path, providers, optimized_out=out)
        return _files_of(out)
    rewritten = path.with_name(f"{path.stem}.cpu.onnx")  # beside its source: external data stays where it is
    try:
        if rewrite_for_cpu(path, rewritten):
            path = rewritten
        session(path, providers, optimized_out=out)
    finally:
        rewritten.unlink(missing_ok=True)
    return _files_of(out)


def rewrite_for_cpu(src: Path, dst: Path, attention: bool = True, group_norm: bool = True) -> int:
    """Write ``src`` with the ONNX Runtime CPU rewrites to ``dst`` (in the same folder, so that external
    data resolves): Attention as MultiHeadAttention, GroupNormalization through InstanceNormalization,
    then the Reshape/Transpose chains that move no data removed (export.ort_layout). Returns how many
    nodes were rewritten or removed (0: nothing written)."""
    import onnx

    from export.ort_attention import fuse_attention
    from export.ort_groupnorm import groupnorm_as_instancenorm
    from export.ort_layout import fold_layout_chains

    model = onnx.load(str(src), load_external_data=False)
    n = (fuse_attention(model) if attention else 0) + (groupnorm_as_instancenorm(model) if group_norm else 0)
    if n:  # the rewrites' layout moves meet the exporter's: the pairs that cancel go
        n += fold_layout_chains(model)
    if n:
        onnx.save(model, str(dst))
    return n


def max_error(
    model_path: Path, spec: GraphSpec, inputs: dict[str, torch.Tensor], expected: list[np.ndarray], providers: list[str]
) -> tuple[float, float]:
    """(max abs error, max |expected|) of ONNX Runtime against torch over every output."""
    sess = session(model_path, providers)
    feed = {s.name: inputs[s.name].numpy() for s in spec.inputs}
    got = sess.run([s.name for s in spec.outputs], feed)
    err = max(float(np.abs(g.astype(np.float32) - e).max()) for g, e in zip(got, expected))
    scale = max(float(np.abs(e).max()) for e in expected)
    return err, scale
