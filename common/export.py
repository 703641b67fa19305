"""`python -m common.export CKPT|RUN OUT.onnx`: a checkpoint of any task -> a verified ONNX model.

CKPT is a checkpoint file; RUN a run directory (`runs/au/quick/version_0`: its checkpoint chosen on validation,
else its last) or a run name's folder (`runs/au/quick`: its newest version that has checkpoints).

The task is read from the checkpoint; the task module supplies the graph (preprocessing and output
activation inside), real example inputs and its metadata. The graph always takes the contract's input size: a model
trained on smaller faces (a quick run at 64 px) gets an area shrink from the contract's size to its own inside the
graph, exactly OpenCV's INTER_AREA (two constant matrix products), and its metadata says so (`model_input_size`,
`align_template` in the contract's pixels). After writing, the model is checked with `onnx.checker` and the
contract's check (`common.contract.check_file`, the one the runtime applies), then compared with PyTorch under ONNX
Runtime on real samples, and timed; any failure exits non-zero.

The comparison looks at each output *before* its activation (relative tolerance) as well as after it: a
saturated softmax or sigmoid gives exactly 0 or 1 whatever the logits, so agreeing probabilities alone can
prove nothing. NaN or infinite outputs are refused; outputs that give every sample the same class are reported.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PureWindowsPath
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from common.contract import CONTRACT_VERSION, METADATA_KEYS, Contract, ContractBroken, UnreadableModel, check_file
from common.tasks import UnknownTaskError, get_task
from common.tracking import chosen_checkpoint, latest_run

ACTIVATIONS = ("Softmax", "Sigmoid", "LogSoftmax")


class ExportError(RuntimeError):
    pass


@dataclass
class ExportReport:
    path: Path
    task: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_rel_diff: dict[str, float] = field(default_factory=dict)  # before the activation, relative to its range
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ort_ms: float = float("nan")
    torch_ms: float = float("nan")

    def lines(self) -> list[str]:
        diffs = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_abs_diff.items())
        relative = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_rel_diff.items())
        lines = [f"wrote {self.path} (task {self.task})", f"ONNX Runtime vs PyTorch max abs diff: {diffs}"]
        if relative:
            lines.append(f"before the activation, max diff relative to the value range: {relative}")
        else:
            lines.append("before the activation: no output ends in a softmax or sigmoid, so the values above are "
                         "compared as the graph gives them (nothing saturates)")
        lines += self.notes + [f"warning: {w}" for w in self.warnings]
        return lines + [f"latency at batch 1 on CPU: ONNX Runtime {self.ort_ms:.1f} ms, PyTorch {self.torch_ms:.1f} ms"]


def checkpoint_of(path: str | Path) -> Path:
    """A checkpoint file as given; for a run directory the checkpoint chosen on validation (else the last), for a
    run name's folder that of its newest version with checkpoints."""
    path = Path(path)
    if not path.is_dir():
        return path
    run = path if (path / "checkpoints").is_dir() else latest_run(path, "checkpoints") or path
    found = chosen_checkpoint(run)
    if not found.is_file():
        raise ExportError(f"{path}: no checkpoint in it (looked for {run / 'checkpoints'}/*.ckpt)")
    return found


def load_task_module(checkpoint_path: str | Path):
    """The LightningModule a checkpoint was trained with, on CPU, in eval mode."""
    path = checkpoint_of(checkpoint_path)
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, not where torch failed
        raise ExportError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or "task" not in checkpoint:
        raise ExportError(f"{path} records no task: only checkpoints written by train.py can be exported")
    try:
        spec = get_task(checkpoint["task"])
    except UnknownTaskError as error:
        raise ExportError(f"{path}: {error}") from None
    module_class = _checkpoint_class(checkpoint, spec.module_class())
    return module_class.load_from_checkpoint(path, map_location="cpu").eval()


def _checkpoint_class(checkpoint: dict, base: type) -> type:
    """The exact module subclass that was trained, if recorded and still a subclass of the task's module."""
    name = checkpoint.get("module_class")
    if not name:
        return base
    module_name, _, attr = name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ExportError(f"checkpoint class {name} is not a {base.__name__}")
    return cls


@dataclass
class Graphs:
    """What is exported and compared: the graph with and without its output activations, and real inputs, all at
    the contract's input size."""

    final: nn.Module
    logits: nn.Module
    inputs: tuple
    model_size: tuple[int, int] | None = None  # where the module trained at another size than the contract's


def contract_image_size(contract: Contract) -> tuple[int, int] | None:
    """The fixed (height, width) of the contract's image or clip input; None for inputs that are not images."""
    shape = contract.inputs[0].shape
    return tuple(shape[-2:]) if all(isinstance(d, int) for d in shape[-2:]) and len(shape) >= 4 else None


def area_matrix(source: int, target: int) -> torch.Tensor:
    """[target, source]: each output pixel the mean of the input span it covers, weighted by overlap: OpenCV's
    INTER_AREA for a shrink, as one side of a separable matrix product."""
    scale = source / target
    edges = torch.arange(target + 1, dtype=torch.float64) * scale
    pixels = torch.arange(source, dtype=torch.float64)
    overlap = torch.minimum(edges[1:, None], pixels[None] + 1) - torch.maximum(edges[:-1, None], pixels[None])
    return (overlap.clamp(min=0) / scale).float()


class ShrinkInput(nn.Module):
    """Contract-size images or clips [..., H, W] -> the size the model was trained at, then the model."""

    def __init__(self, graph: nn.Module, source: tuple[int, int], target: tuple[int, int]):
        super().__init__()
        self.graph = graph
        self.register_buffer("rows", area_matrix(source[0], target[0]))
        self.register_buffer("columns", area_matrix(source[1], target[1]).T.contiguous())

    def forward(self, x: torch.Tensor):
        return self.graph(self.rows @ x @ self.columns)


def export_graphs(module, samples: int = 4) -> Graphs:
    final, logits = module.export_wrapper().eval(), module.export_wrapper(activation=False).eval()
    inputs = tuple(x.float() for x in module.example_inputs(samples))
    wanted, trained = contract_image_size(module.contract), getattr(module, "image_size", None)
    if wanted is None or trained is None or tuple(wanted) == (trained, trained):
        return Graphs(final, logits, inputs)
    if trained > min(wanted):
        raise ExportError(f"the model was trained on {trained} px inputs, larger than the contract's {list(wanted)}: "
                          f"train at the contract's size")
    size = (trained, trained)
    grown = tuple(F.interpolate(x.flatten(0, -4), size=wanted, mode="bilinear", align_corners=False)
                  .reshape(*x.shape[:-2], *wanted).clamp(0, 1) for x in inputs)
    return Graphs(ShrinkInput(final, wanted, size).eval(), ShrinkInput(logits, wanted, size).eval(), grown, size)


# ---------------------------------------------------------------- attention as one node

_SDPA = F.scaled_dot_product_attention
_ATTENTION_DOMAIN = "facex.export"


class _Attention(torch.autograd.Function):
    """Scaled dot-product attention that exports as one node, which becomes ONNX Runtime's MultiHeadAttention
    (com.microsoft, run by its CPU and CUDA providers): one kernel where the plain export has MatMul, Softmax and
    MatMul materialising every attention matrix."""

    @staticmethod
    def forward(ctx, q, k, v, bias, heads: int, head_size: int, scale):
        return _SDPA(q, k, v, attn_mask=bias, scale=scale)

    @staticmethod
    def symbolic(g, q, k, v, bias, heads: int, head_size: int, scale):
        # MultiHeadAttention takes the query as [B, S, N*H] and keys and values as [B, N, L, H]
        query = g.op("Reshape", g.op("Transpose", q, perm_i=[0, 2, 1, 3]), g.op("Constant", value_t=torch.tensor([0, 0, -1])))
        inputs = [query, k, v] + ([] if bias is None else [bias])
        attributes = {"num_heads_i": heads, **({} if scale is None else {"scale_f": float(scale)})}
        out = g.op(f"{_ATTENTION_DOMAIN}::Attention", *inputs, **attributes)
        out = g.op("Reshape", out, g.op("Constant", value_t=torch.tensor([0, 0, heads, head_size])))
        return g.op("Transpose", out, perm_i=[0, 2, 1, 3])


def _fusable_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **more):
    plain = (q.dim() != 4 or is_causal or dropout_p or more or
             (attn_mask is not None and (attn_mask.dtype == torch.bool or attn_mask.dim() not in (3, 4))))
    if plain:
        return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **more)
    bias = attn_mask.unsqueeze(0) if attn_mask is not None and attn_mask.dim() == 3 else attn_mask
    if bias is not None:
        bias = bias.expand(-1 if bias.shape[0] in (1, q.shape[0]) else q.shape[0], q.shape[1], -1, -1).to(q.dtype)
    return _Attention.apply(q, k, v, bias, int(q.shape[1]), int(q.shape[3]), scale)


def fuse_attention(model) -> int:
    """The export's attention nodes as ONNX Runtime's MultiHeadAttention (inputs query, key, value, then the
    attention bias in its sixth place); the number of nodes."""
    import onnx

    count = 0
    for node in model.graph.node:
        if node.domain == _ATTENTION_DOMAIN and node.op_type == "Attention":
            node.domain, node.op_type = "com.microsoft", "MultiHeadAttention"
            if len(node.input) == 4:
                bias = node.input[3]
                del node.input[3:]
                node.input.extend(["", "", bias])
            count += 1
    imports = [o for o in model.opset_import if o.domain not in (_ATTENTION_DOMAIN, "com.microsoft")]
    del model.opset_import[:]
    model.opset_import.extend(imports + ([onnx.helper.make_opsetid("com.microsoft", 1)] if count else []))
    return count


ATTENTION = ("plain", "fused")


def export_module(module, output: str | Path, opset: int = 18, samples: int = 4,
                  attention: str = "plain") -> tuple[Path, Graphs]:
    """`attention`: `plain` (MatMul, Softmax, MatMul: standard ONNX, any runtime) or `fused` (ONNX Runtime's
    MultiHeadAttention, see _Attention; on this project's CPU it gained nothing measurable: README, Benchmarks)."""
    if attention not in ATTENTION:
        raise ExportError(f"attention must be one of {ATTENTION}, got {attention!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    contract = module.contract
    graphs = export_graphs(module, samples)
    # The TorchScript exporter writes one self-contained file and is the faster of the two; torch flags it as
    # legacy, which is no news to the user.
    if attention == "fused":
        F.scaled_dot_product_attention = _fusable_attention
    # timm keeps some attention (Swin's windows) on its explicit path unless asked: the same function either way
    explicit = [m for m in graphs.final.modules() if getattr(m, "fused_attn", True) is False] if attention == "fused" else []
    for m in explicit:
        m.fused_attn = True
    try:
        _export(graphs, output, contract, opset)
    finally:
        F.scaled_dot_product_attention = _SDPA
        for m in explicit:
            m.fused_attn = False
    with torch.no_grad():
        widths = [tuple(t.shape) for t in _as_tuple(graphs.final(*graphs.inputs))]
    write_metadata(output, module_metadata(module, graphs.model_size), output_shapes(contract, widths))
    return output, graphs


def _export(graphs: Graphs, output: Path, contract: Contract, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # the contract fixes the input size, so shape-dependent branches are meant to be traced as constants
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(graphs.final, graphs.inputs, str(output), dynamo=False, opset_version=opset,
                          input_names=contract.input_names, output_names=contract.output_names,
                          dynamic_axes=contract.dynamic_axes(), do_constant_folding=True)


def output_shapes(contract: Contract, shapes: Sequence[tuple[int, ...]]) -> dict[str, list]:
    """Each output's shape as the contract names it: N and T stay symbolic, every other axis is the fixed size the
    graph gives it (the exporter's own names for them, such as `ReduceSumau_prob_dim_1`, say nothing)."""
    return {spec.name: [dim if dim in ("N", "T") else size for dim, size in zip(spec.shape, shape)]
            for spec, shape in zip(contract.outputs, shapes)}


def module_metadata(module, model_size: tuple[int, int] | None = None) -> dict[str, str]:
    contract = module.contract
    metadata = {
        "task": module.task,
        "input_name": ",".join(contract.input_names),
        "output_names": ",".join(contract.output_names),
        "input_layout": f"{contract.layout} RGB float32",
        "input_range": "[0, 1]",
        "normalisation": "inside the graph",
        "output_activation": ",".join(spec.activation or "none" for spec in contract.outputs),
        "fps": "",
        "clip_length": "",
        "version": _package_version(),
        "contract_version": CONTRACT_VERSION,
    }
    metadata.update({k: str(v) for k, v in module.export_metadata().items()})
    if model_size is not None:
        metadata.update(at_contract_size(metadata, contract_image_size(contract), model_size))
    metadata["training_config"] = without_local_paths(metadata.get("training_config", ""))
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ExportError(f"{type(module).__name__}.export_metadata() lacks {missing}")
    return metadata


def at_contract_size(metadata: dict[str, str], size: tuple[int, int], model_size: tuple[int, int]) -> dict[str, str]:
    """Metadata of a graph that shrinks the contract's input to `model_size`: input pixels are the contract's."""
    scale = size[1] / model_size[1]
    changed = {"input_size": json.dumps(list(size)), "model_input_size": json.dumps(list(model_size))}
    try:
        template = json.loads(metadata.get("align_template") or "null")
    except json.JSONDecodeError:
        template = None
    if isinstance(template, list) and template:
        changed["align_template"] = json.dumps([[round(v * scale, 4) for v in point] for point in template])
    return changed


def without_local_paths(config: str) -> str:
    """The training config with every absolute path cut to its file name: the model leaves this machine."""
    try:
        values = yaml.safe_load(config)
    except yaml.YAMLError:
        return config
    return yaml.safe_dump(_scrub(values), sort_keys=False) if isinstance(values, dict) else config


def _scrub(value):
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or PureWindowsPath(value).drive):
        return f"<local>/{PureWindowsPath(value).name}"
    return value


def write_metadata(path: Path, metadata: dict[str, str], shapes: dict[str, list] | None = None) -> None:
    """The metadata, and (where given) the graph outputs' declared shapes: symbols for str, sizes for ints; the
    attention nodes become ONNX Runtime's."""
    import onnx

    model = onnx.load(str(path))
    fuse_attention(model)
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    for output in model.graph.output:
        for dim, size in zip(output.type.tensor_type.shape.dim, (shapes or {}).get(output.name, ())):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = int(size)
    onnx.save(model, str(path))


def verify(path: Path, wrapper, inputs: tuple, atol: float = 1e-4, runs: int = 20, rtol: float = 1e-4,
           logits_wrapper=None, categorical: Sequence[str] | None = None) -> ExportReport:
    """onnx.checker; ONNX Runtime vs PyTorch on the same real samples, before and after each output's activation;
    then batch-1 latency. `logits_wrapper` is the same graph without activations (`export_wrapper(False)`);
    `categorical` names the outputs that are class distributions (all by default), for the one-class warning."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    names = [o.name for o in model.graph.output]
    before = pre_activation_outputs(model)
    session = ort.InferenceSession(_with_outputs(model, before.values()), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    got = dict(zip(names + list(before.values()), session.run(names + list(before.values()), feeds)))
    expected = dict(zip(names, _as_numpy(wrapper, inputs)))
    report = ExportReport(path=path, task="")
    for name in names:
        _refuse_non_finite(path, name, expected[name], got[name])
        report.max_abs_diff[name] = float(np.abs(expected[name] - got[name]).max())
    if before and logits_wrapper is not None:
        raw = dict(zip(names, _as_numpy(logits_wrapper, inputs)))
        for name, tensor in before.items():
            _refuse_non_finite(path, f"{name} before its activation", raw[name], got[tensor])
            scale = max(float(np.abs(raw[name]).max()), 1.0)
            report.max_rel_diff[name] = float(np.abs(raw[name] - got[tensor]).max()) / scale
    report.warnings = degenerate_outputs(expected, categorical)
    _time(report, session, names, feeds, wrapper, inputs, runs)
    bad = {k: v for k, v in report.max_abs_diff.items() if not v <= atol}
    bad.update({f"{k} (before activation, relative)": v for k, v in report.max_rel_diff.items() if not v <= rtol})
    if bad:
        raise ExportError(f"{path}: ONNX Runtime disagrees with PyTorch beyond {atol} (absolute) / {rtol} "
                          f"(relative, before activations): {bad}")
    return report


def pre_activation_outputs(model) -> dict[str, str]:
    """Graph output -> the tensor its final Softmax/Sigmoid reads, for outputs that end in one."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        if node is not None and node.op_type in ACTIVATIONS:
            found[output.name] = node.input[0]
    return found


def degenerate_outputs(outputs: dict[str, np.ndarray], categorical: Sequence[str] | None = None) -> list[str]:
    """Signs that the checked samples say little: one class for every sample (class distributions), or
    probabilities of exactly 0/1."""
    notes = []
    for name, value in outputs.items():
        one_class = value.ndim == 2 and value.shape[0] > 1 and value.shape[1] > 1 and len(set(value.argmax(1).tolist())) == 1
        if one_class and (categorical is None or name in categorical):
            notes.append(f"{name}: every checked sample gives class {int(value[0].argmax())}")
        if value.size and np.isin(value, (0.0, 1.0)).all():
            notes.append(f"{name}: every value is exactly 0 or 1 (saturated); only the comparison before the "
                         f"activation is informative")
    return notes


def _with_outputs(model, tensors) -> bytes:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in tensors:
        copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    return copy.SerializeToString()


def _as_numpy(wrapper, inputs: tuple) -> list[np.ndarray]:
    with torch.no_grad():
        out = wrapper(*inputs)
    return [t.float().numpy() for t in _as_tuple(out)]


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _refuse_non_finite(path: Path, name: str, *arrays: np.ndarray) -> None:
    for source, array in zip(("PyTorch", "ONNX Runtime"), arrays):
        if not np.isfinite(array).all():
            raise ExportError(f"{path}: {source} gives NaN or infinite values for {name}: the model is broken "
                              f"(diverged training, or a bad checkpoint) and is not exported")


def _time(report: ExportReport, session, names, feeds, wrapper, inputs, runs: int) -> None:
    single = {k: v[:1] for k, v in feeds.items()}
    report.ort_ms = median_ms(lambda: session.run(names, single), runs)
    with torch.no_grad():
        report.torch_ms = median_ms(lambda: wrapper(*(x[:1] for x in inputs)), runs)


def export_checkpoint(checkpoint: str | Path, output: str | Path, opset: int = 18, samples: int = 4,
                      atol: float = 1e-4, attention: str = "plain") -> ExportReport:
    module = load_task_module(checkpoint)
    path, graphs = export_module(module, output, opset, samples, attention)
    try:
        check_file(path)
    except (ContractBroken, UnreadableModel) as error:
        raise ExportError(f"the runtime would refuse it: {error}") from None
    categorical = [spec.name for spec in module.contract.outputs if spec.activation == "softmax"]
    report = verify(path, graphs.final, graphs.inputs, atol, logits_wrapper=graphs.logits, categorical=categorical)
    report.task = module.task
    if graphs.model_size is not None:
        report.notes.append(f"trained on {graphs.model_size[0]} px inputs: the graph takes the contract's "
                            f"{list(contract_image_size(module.contract))} and shrinks them (area) to that size")
    return report


def median_ms(fn, runs: int) -> float:
    """Median wall time of `runs` calls in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _package_version() -> str:
    try:
        return version("facex")
    except PackageNotFoundError:
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt written by train.py, a run directory or a run name's folder")
    parser.add_argument("output", help="where to write the .onnx model")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18; default 18)")
    parser.add_argument("--samples", type=int, default=4, help="real samples compared between PyTorch and ORT")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed abs difference (fp32)")
    parser.add_argument("--attention", choices=ATTENTION, default="plain",
                        help="plain: standard ONNX operators; fused: ONNX Runtime's MultiHeadAttention")
    args = parser.parse_args(argv)
    if args.opset < 18:
        parser.error(f"--opset {args.opset}: use 18 or newer")
    try:
        report = export_checkpoint(args.checkpoint, args.output, args.opset, args.samples, args.atol, args.attention)
    except ExportError as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
