"""Model outputs -> the values the application shows.

AU (dual head): `au_prob` [N, K] and `au_intensity` [N, K] become OpenFace's columns, in OpenFace's order: every
`AUxx_r` (intensity 0-5, 0 where the AU does not occur), then every `AUxx_c` (occurrence 0/1 at the model's
threshold), then every `AUxx_p` (probability, this project's addition). AU names come from the model's metadata
(`aus`), in output order.
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np


def openface_columns(au_prob: np.ndarray, au_intensity: np.ndarray, aus: Sequence[str], threshold: float = 0.5
                     ) -> dict[str, np.ndarray]:
    """The two outputs [N, K] as named columns (each [N]) in OpenFace's order: _r block, _c block, _p block."""
    au_prob, au_intensity = np.atleast_2d(au_prob), np.atleast_2d(au_intensity)
    if au_prob.shape != au_intensity.shape or au_prob.shape[1] != len(aus):
        raise ValueError(f"au_prob {au_prob.shape} and au_intensity {au_intensity.shape} must both be [N, {len(aus)}]")
    occurs = au_prob >= threshold
    columns = {f"{name}_r": np.where(occurs[:, k], au_intensity[:, k], 0.0) for k, name in enumerate(aus)}
    columns.update({f"{name}_c": occurs[:, k].astype(np.int64) for k, name in enumerate(aus)})
    columns.update({f"{name}_p": au_prob[:, k] for k, name in enumerate(aus)})
    return columns


def au_names(metadata: Mapping[str, str]) -> list[str]:
    return json.loads(metadata.get("aus") or metadata["classes"])


def au_threshold(metadata: Mapping[str, str]) -> float:
    return float(metadata.get("threshold", 0.5) or 0.5)


def class_names(metadata: Mapping[str, str]) -> list[str]:
    return json.loads(metadata["classes"])
