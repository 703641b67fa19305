"""ONNX contracts: the dataclasses a task's contract is written in, and the checks an exported model must pass.

Each task declares its own contract next to its module (`<task>/contract.py`); export writes it, the runtime
reads it, tests check it. This module imports nothing heavy, so the inference side can use it without training
code.
"""
from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = "2"

# Keys every exported model carries in `metadata_props`. The preprocessing keys say how to make the input from a
# camera frame without reading this repository: which face detector and landmarks, the 5-point template (in input
# pixels) and margin of the similarity alignment, and the resize interpolation.
METADATA_KEYS = (
    "task", "classes", "input_name", "input_layout", "input_size", "input_range", "normalisation",
    "output_names", "output_activation", "fps", "clip_length", "face_detector", "landmark_scheme",
    "align_template", "align_margin", "resize_interpolation", "training_config", "version", "contract_version",
)


class ContractError(ValueError):
    pass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings for symbolic axes ("N" batch, "C" classes, "T" time)
    activation: str = ""  # the graph's last operation on an output: "softmax", "sigmoid", or "" for none


@dataclass(frozen=True)
class Contract:
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layout: str

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


def check_model(model, contract: Contract) -> dict[str, str]:
    """An onnx.ModelProto against `contract`: tensor names, metadata keys and task; returns the metadata."""
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != contract.input_names or outputs != contract.output_names:
        raise ContractError(f"{contract.task} graph has inputs {inputs} and outputs {outputs}; the contract says "
                            f"{contract.input_names} -> {contract.output_names}")
    metadata = {p.key: p.value for p in model.metadata_props}
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ContractError(f"{contract.task} model lacks metadata keys {missing}")
    if metadata["task"] != contract.task:
        raise ContractError(f"model metadata says task {metadata['task']!r}, the contract is for {contract.task!r}")
    return metadata
