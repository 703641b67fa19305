"""`python -m common.export CKPT OUT.onnx`: a checkpoint of any task -> a verified ONNX model.

The task is read from the checkpoint; the task module supplies the graph (preprocessing and output
activation inside), real example inputs and its metadata. After writing, the model is checked with
`onnx.checker`, compared with PyTorch under ONNX Runtime, and timed; any failure exits non-zero.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from common.contract import CONTRACT_VERSION, METADATA_KEYS
from common.tasks import UnknownTaskError, get_task


class ExportError(RuntimeError):
    pass


@dataclass
class ExportReport:
    path: Path
    task: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    ort_ms: float = float("nan")
    torch_ms: float = float("nan")

    def lines(self) -> list[str]:
        diffs = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_abs_diff.items())
        return [f"wrote {self.path} (task {self.task})", f"ONNX Runtime vs PyTorch max abs diff: {diffs}",
                f"latency at batch 1 on CPU: ONNX Runtime {self.ort_ms:.1f} ms, PyTorch {self.torch_ms:.1f} ms"]


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
        "fps": "",
        "clip_length": "",
        "version": _package_version(),
        "contract_version": CONTRACT_VERSION,
    }
    metadata.update({k: str(v) for k, v in module.export_metadata().items()})
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ExportError(f"{type(module).__name__}.export_metadata() lacks {missing}")
    return metadata


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def verify(path: Path, wrapper, inputs: tuple, atol: float = 1e-4, runs: int = 20) -> ExportReport:
    """onnx.checker, then ONNX Runtime vs PyTorch on the same real samples, then batch-1 latency."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    with torch.no_grad():
        expected = wrapper(*inputs)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = session.run(names, feeds)
    report = ExportReport(path=path, task="")
    for name, ours, theirs in zip(names, expected, got):
        report.max_abs_diff[name] = float(np.abs(ours.numpy() - theirs).max())
    single = {k: v[:1] for k, v in feeds.items()}
    report.ort_ms = _median_ms(lambda: session.run(names, single), runs)
    with torch.no_grad():
        report.torch_ms = _median_ms(lambda: wrapper(*(x[:1] for x in inputs)), runs)
    bad = {k: v for k, v in report.max_abs_diff.items() if not v <= atol}
    if bad:
        raise ExportError(f"{path}: ONNX Runtime disagrees with PyTorch beyond {atol}: {bad}")
    return report


def export_checkpoint(checkpoint: str | Path, output: str | Path, opset: int = 18, samples: int = 4,
                      atol: float = 1e-4) -> ExportReport:
    module = load_task_module(checkpoint)
    path, inputs = export_module(module, output, opset, samples)
    report = verify(path, module.export_wrapper().eval(), inputs, atol)
    report.task = module.task
    return report


def _median_ms(fn, runs: int) -> float:
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
