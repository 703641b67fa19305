"""The action-unit model's ONNX contract: float RGB faces in [0, 1] -> AU probabilities and intensities (0-5) for
the K AUs the model was trained on (17 in the application's recipe), and the rule that turns the two outputs into
OpenFace's columns. NumPy only: the runtime and the C++ port read this, training code is not needed.

OpenFace's order: every `AUxx_r` (intensity 0-5, 0 where the AU does not occur), then every `AUxx_c` (occurrence
0/1: probability >= the model's threshold), then every `AUxx_p` (the probability, this project's addition).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from common.contract import Contract, TensorSpec

CONTRACT = Contract(
    task="au",
    inputs=(TensorSpec("image", ("N", 3, 256, 256)),),
    outputs=(TensorSpec("au_prob", ("N", "K"), value_range=(0.0, 1.0)),
             TensorSpec("au_intensity", ("N", "K"), value_range=(0.0, 5.0))),
    layout="NCHW",
    labels_key="aus",
)


def gate_intensity(au_prob, au_intensity, threshold: float):
    """The intensity where the AU occurs (probability >= threshold), 0 elsewhere; NumPy arrays or torch tensors."""
    occurs = au_prob >= threshold
    return au_intensity * (occurs.astype(au_intensity.dtype) if isinstance(occurs, np.ndarray) else occurs.to(au_intensity.dtype))


def openface_columns(au_prob: np.ndarray, au_intensity: np.ndarray, aus: Sequence[str], threshold: float = 0.5
                     ) -> dict[str, np.ndarray]:
    """The two outputs [N, K] as named columns (each [N]) in OpenFace's order: _r block, _c block, _p block."""
    au_prob, au_intensity = np.atleast_2d(au_prob), np.atleast_2d(au_intensity)
    if au_prob.shape != au_intensity.shape or au_prob.shape[1] != len(aus):
        raise ValueError(f"au_prob {au_prob.shape} and au_intensity {au_intensity.shape} must both be [N, {len(aus)}]")
    gated = gate_intensity(au_prob, au_intensity, threshold)
    columns = {f"{name}_r": gated[:, k] for k, name in enumerate(aus)}
    columns.update({f"{name}_c": (au_prob[:, k] >= threshold).astype(np.int64) for k, name in enumerate(aus)})
    columns.update({f"{name}_p": au_prob[:, k] for k, name in enumerate(aus)})
    return columns
