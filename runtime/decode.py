"""Model outputs -> the values the application shows.

AU (dual head): `au_prob` [N, K] and `au_intensity` [N, K] become OpenFace's columns by the AU contract's rule
(`au.contract.openface_columns`); AU names come from the model's metadata (`aus`), in output order, and the
threshold from `threshold`.
"""
from __future__ import annotations

import json
from typing import Mapping

from au.contract import openface_columns  # noqa: F401 -- the AU contract's rule, served from here


def au_names(metadata: Mapping[str, str]) -> list[str]:
    return json.loads(metadata.get("aus") or metadata["classes"])


def au_threshold(metadata: Mapping[str, str]) -> float:
    return float(metadata.get("threshold", 0.5) or 0.5)


def class_names(metadata: Mapping[str, str]) -> list[str]:
    return json.loads(metadata["classes"])
