"""`python -m common.export CKPT OUT.onnx`: a checkpoint of any task -> a verified ONNX model.

The task is read from the checkpoint; the task module supplies the graph (preprocessing and output
activation inside), real example inputs and its metadata. After writing, the model is checked with
`onnx.checker` and the task's contract, then compared with PyTorch under ONNX Runtime on real samples, and
timed; any failure exits non-zero.

The comparison looks at each output *before* its activation (relative tolerance) as well as after it: a
saturated softmax or sigmoid gives exactly 0 or 1 whatever the logits, so agreeing probabilities alone can
prove nothing. NaN or infinite outputs are refused; outputs that give every sample the same class are reported.
"""
from __future__ import annotations

import argparse
import importlib
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
import yaml

from common.contract import CONTRACT_VERSION, METADATA_KEYS, ContractError, check_model
from common.tasks import UnknownTaskError, get_task

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
    ort_ms: float = float("nan")
    torch_ms: float = float("nan")

    def lines(self) -> list[str]:
        diffs = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_abs_diff.items())
        relative = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_rel_diff.items())
        lines = [f"wrote {self.path} (task {self.task})", f"ONNX Runtime vs PyTorch max abs diff: {diffs}"]
        if relative:
            lines.append(f"before the activation, max diff relative to the value range: {relative}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines + [f"latency at batch 1 on CPU: ONNX Runtime {self.ort_ms:.1f} ms, PyTorch {self.torch_ms:.1f} ms"]


def load_task_module(checkpoint_path: str | Path):
    """The LightningModule a checkpoint was trained with, on CPU, in eval mode."""
    path = Path(checkpoint_path)
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


def export_module(module, output: str | Path, opset: int = 18, samples: int = 4) -> tuple[Path, tuple]:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    contract = module.contract
    wrapper = module.export_wrapper().eval()
    inputs = tuple(x.float() for x in module.example_inputs(samples))
    # The TorchScript exporter writes one self-contained file and is the faster of the two; torch flags it as
    # legacy, which is no news to the user.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # the contract fixes the input size, so shape-dependent branches are meant to be traced as constants
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapper, inputs, str(output), dynamo=False, opset_version=opset,
                          input_names=contract.input_names, output_names=contract.output_names,
                          dynamic_axes=contract.dynamic_axes(), do_constant_folding=True)
    write_metadata(output, module_metadata(module))
    return output, inputs


def module_metadata(module) -> dict[str, str]:
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
    metadata["training_config"] = without_local_paths(metadata.get("training_config", ""))
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ExportError(f"{type(module).__name__}.export_metadata() lacks {missing}")
    return metadata


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


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
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
    return [t.float().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


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
                      atol: float = 1e-4) -> ExportReport:
    module = load_task_module(checkpoint)
    path, inputs = export_module(module, output, opset, samples)
    try:
        check_model(__import__("onnx").load(str(path)), module.contract)
    except ContractError as error:
        raise ExportError(f"{path}: {error}") from None
    categorical = [spec.name for spec in module.contract.outputs if spec.activation == "softmax"]
    report = verify(path, module.export_wrapper().eval(), inputs, atol,
                    logits_wrapper=module.export_wrapper(activation=False).eval(), categorical=categorical)
    report.task = module.task
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
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("output", help="where to write the .onnx model")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18; default 18)")
    parser.add_argument("--samples", type=int, default=4, help="real samples compared between PyTorch and ORT")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed abs difference (fp32)")
    args = parser.parse_args(argv)
    if args.opset < 18:
        parser.error(f"--opset {args.opset}: use 18 or newer")
    try:
        report = export_checkpoint(args.checkpoint, args.output, args.opset, args.samples, args.atol)
    except ExportError as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
