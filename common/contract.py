"""ONNX contracts: the dataclasses a task's contract is written in, and the one check an exported model must pass.

Each task declares its own contract next to its module (`<task>/contract.py`); export writes it and runs
`check_file` on what it wrote, the runtime runs the same `check_file` before it serves a model (`python -m
runtime.check` prints its verdict), tests use it too. The check: input and output names, ranks, fixed dimensions
and float32 types, the metadata every model carries, the labels (class names or AU names that match the output
width), and the value ranges of the outputs on a probe input (probabilities that sum to 1, sigmoid scores in
[0, 1], AU intensities in [0, 5]). This module imports nothing heavy (onnx and onnxruntime when a file is checked),
so the inference side can use it without training code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONTRACT_VERSION = "2"

# Keys every exported model carries in `metadata_props`. The preprocessing keys say how to make the input from a
# camera frame without reading this repository: which face detector and landmarks, the 5-point template (in input
# pixels) and margin of the similarity alignment, and the resize interpolation.
METADATA_KEYS = (
    "task", "classes", "input_name", "input_layout", "input_size", "input_range", "normalisation",
    "output_names", "output_activation", "fps", "clip_length", "face_detector", "landmark_scheme",
    "align_template", "align_margin", "resize_interpolation", "training_config", "version", "contract_version",
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings for symbolic axes ("N" batch, "C" classes, "T" time)
    activation: str = ""  # the graph's last operation on an output: "softmax", "sigmoid", or "" for none
    value_range: tuple[float, float] | None = None  # where an output's values must lie, beyond its activation's

    @property
    def bounds(self) -> tuple[float, float] | None:
        if self.value_range is not None:
            return self.value_range
        return (0.0, 1.0) if self.activation in ("softmax", "sigmoid") else None


@dataclass(frozen=True)
class Contract:
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layout: str
    labels_key: str = "classes"  # the metadata list that names the first output's last axis
    probe_scale: float = 1.0  # the probe input's values lie in [0, probe_scale)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The batch axis N and a time axis T written as a symbol stay dynamic in the graph."""
        axes = {}
        for spec in self.inputs + self.outputs:
            named = {i: dim for i, dim in enumerate(spec.shape) if dim in ("N", "T")}
            if named:
                axes[spec.name] = named
        return axes


# ---------------------------------------------------------------- the check

FLOAT = 1  # onnx.TensorProto.FLOAT
SUM_TOLERANCE = 1e-3
RANGE_TOLERANCE = 1e-4  # float32 rounding at a bound (an intensity of 5 * sigmoid)


class UnreadableModel(OSError):
    """The file is missing, partial or not an ONNX model."""


class ContractBroken(ValueError):
    """The file is an ONNX model, but not one the contract allows."""


@dataclass
class ModelInfo:
    path: Path
    task: str
    metadata: dict[str, str]
    inputs: list[dict]
    outputs: list[dict]
    labels: list[str] = field(default_factory=list)


def contract_of(task: str) -> Contract:
    from common.tasks import TASKS

    if task not in TASKS:
        raise ContractBroken(f"metadata names task {task!r}; the application serves {sorted(TASKS)}")
    return TASKS[task].contract_object()


def load_proto(path: Path | str):
    """The ModelProto, or UnreadableModel naming the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UnreadableModel(f"{path}: no such file")
    try:
        return onnx.load(str(path))
    except Exception as error:  # truncated or foreign bytes: protobuf's own message says little
        raise UnreadableModel(f"{path}: not a readable ONNX model ({type(error).__name__})") from None


def tensor_info(value) -> dict:
    kind = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in kind.shape.dim]
    return {"name": value.name, "shape": dims, "dtype": "float32" if kind.elem_type == FLOAT else str(kind.elem_type)}


def check_structure(proto, path: Path) -> ModelInfo:
    metadata = {p.key: p.value for p in proto.metadata_props}
    if "task" not in metadata:
        raise ContractBroken(f"{path}: no `task` in the model metadata: not exported by common.export")
    task = metadata["task"]
    contract = contract_of(task)
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ContractBroken(f"{path}: metadata lacks {missing}")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [tensor_info(v) for v in proto.graph.input if v.name not in initializers]
    outputs = [tensor_info(v) for v in proto.graph.output]
    for role, found, specs in (("inputs", inputs, contract.inputs), ("outputs", outputs, contract.outputs)):
        names = [t["name"] for t in found]
        if names != [s.name for s in specs]:
            raise ContractBroken(f"{path}: {task} {role} are {names}; the contract says {[s.name for s in specs]}")
        for tensor, spec in zip(found, specs):
            if tensor["dtype"] != "float32":
                raise ContractBroken(f"{path}: {tensor['name']} is {tensor['dtype']}, the contract says float32")
            if len(tensor["shape"]) != len(spec.shape):
                raise ContractBroken(f"{path}: {tensor['name']} has rank {len(tensor['shape'])}, the contract says "
                                     f"{len(spec.shape)} {list(spec.shape)}")
            for axis, (dim, want) in enumerate(zip(tensor["shape"], spec.shape)):
                if isinstance(want, int) and dim != want:
                    raise ContractBroken(f"{path}: {tensor['name']} axis {axis} is {dim}, the contract says {want} "
                                         f"(shape {list(spec.shape)})")
                if want in ("N", "T") and isinstance(dim, int):
                    raise ContractBroken(f"{path}: {tensor['name']} axis {axis} ({want}) is fixed at {dim}; it must be "
                                         f"dynamic")
    info = ModelInfo(Path(path), task, metadata, inputs, outputs)
    info.labels = check_labels(info)
    return info


def check_labels(info: ModelInfo) -> list[str]:
    key = contract_of(info.task).labels_key
    try:
        labels = json.loads(info.metadata.get(key, ""))
    except json.JSONDecodeError:
        raise ContractBroken(f"{info.path}: metadata {key!r} is not a JSON list: {info.metadata.get(key)!r}") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ContractBroken(f"{info.path}: metadata {key!r} must list names, got {labels!r}")
    width = info.outputs[0]["shape"][-1]
    if isinstance(width, int) and width != len(labels):
        raise ContractBroken(f"{info.path}: {info.outputs[0]['name']} has {width} values per row but {key} names "
                             f"{len(labels)}")
    return labels


def probe_input(info: ModelInfo, batch: int = 2, length: int = 48) -> dict[str, np.ndarray]:
    """A deterministic input in the contract's range (in [0, probe_scale)); a symbolic axis other than N and T
    takes its size from the metadata's `input_size`, which names the input's trailing axes (spotting: ["T", D])."""
    rng = np.random.default_rng(0)
    try:
        input_size = json.loads(info.metadata.get("input_size", "[]"))
    except json.JSONDecodeError:
        raise ContractBroken(f"{info.path}: metadata 'input_size' is not JSON: "
                             f"{info.metadata['input_size']!r}") from None
    input_size = input_size if isinstance(input_size, list) else []
    scale, feeds = contract_of(info.task).probe_scale, {}
    for tensor in info.inputs:
        shape = tensor["shape"]
        symbols = {"N": batch, "T": length}
        symbols.update({axis: size for axis, size in zip(shape[len(shape) - len(input_size):], input_size)
                        if isinstance(axis, str) and axis not in symbols and isinstance(size, int)})
        shape = [d if isinstance(d, int) else symbols.get(d, batch if i == 0 else d) for i, d in enumerate(shape)]
        if any(not isinstance(d, int) or d <= 0 for d in shape):
            raise ContractBroken(f"{info.path}: cannot size a probe for {tensor['name']} {tensor['shape']}")
        feeds[tensor["name"]] = (rng.random(shape, dtype=np.float32) * scale).astype(np.float32)
    return feeds


def check_values(info: ModelInfo, outputs: dict[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        if not np.isfinite(value).all():
            raise ContractBroken(f"{info.path}: {name} gives NaN or infinite values on the probe input")
    for spec in contract_of(info.task).outputs:
        value, bounds = outputs[spec.name], spec.bounds
        if spec.activation == "softmax":
            if value.min() < 0 or value.max() > 1 or np.abs(value.sum(-1) - 1).max() > SUM_TOLERANCE:
                raise ContractBroken(f"{info.path}: {spec.name} must be probabilities summing to 1 per row "
                                     f"(sums {np.round(value.sum(-1), 4).tolist()})")
        elif bounds is not None and not (bounds[0] - RANGE_TOLERANCE <= value.min()
                                         and value.max() <= bounds[1] + RANGE_TOLERANCE):
            raise ContractBroken(f"{info.path}: {spec.name} outside [{bounds[0]:g}, {bounds[1]:g}]")


def check_file(path: Path | str, session=None) -> ModelInfo:
    """Structure, labels and value ranges; raises UnreadableModel or ContractBroken."""
    path = Path(path)
    info = check_structure(load_proto(path), path)
    if session is None:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:
            raise UnreadableModel(f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0][:200]})") from None
    feeds = probe_input(info)
    try:
        values = session.run(None, feeds)
    except Exception as error:
        raise ContractBroken(f"{path}: the probe input {({k: list(v.shape) for k, v in feeds.items()})} fails "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    check_values(info, dict(zip([o["name"] for o in info.outputs], values)))
    return info
