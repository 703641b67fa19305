"""The ONNX contract of each task: tensor names, shapes and the metadata keys a consumer can rely on.

Shared by export (which writes it), runtime (which reads it) and tests; it imports nothing heavy so the
inference side can use it without training code.
"""
from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = "1"

# Keys every exported model carries in `metadata_props`.
METADATA_KEYS = (
    "task", "classes", "input_name", "input_layout", "input_size", "input_range", "normalisation",
    "output_names", "fps", "clip_length", "training_config", "version", "contract_version",
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings for symbolic axes ("N" batch, "C" classes)


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
        """Every symbolic axis stays dynamic in the graph (the batch axis, at least)."""
        axes = {}
        for spec in self.inputs + self.outputs:
            named = {i: dim for i, dim in enumerate(spec.shape) if isinstance(dim, str) and dim == "N"}
            if named:
                axes[spec.name] = named
        return axes


CONTRACTS: dict[str, Contract] = {
    "emotion": Contract(
        "emotion", (TensorSpec("image", ("N", 3, 224, 224)),), (TensorSpec("probs", ("N", "C")),), "NCHW"),
    "microexp": Contract(
        "microexp", (TensorSpec("clip", ("N", 16, 3, 224, 224)),), (TensorSpec("probs", ("N", "C")),), "NTCHW"),
    "au": Contract(
        "au", (TensorSpec("image", ("N", 3, 256, 256)),),
        (TensorSpec("au_prob", ("N", 17)), TensorSpec("au_intensity", ("N", 17))), "NCHW"),
    "spotting": Contract(
        "spotting", (TensorSpec("frames", ("N", "T", 3, 224, 224)),), (TensorSpec("scores", ("N", "T", 3)),), "NTCHW"),
}
