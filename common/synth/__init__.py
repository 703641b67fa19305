"""Built-in synthetic FACS faces: the default data of every task and the ground truth of its tests.

A procedural renderer (numpy + OpenCV drawing only) turns action-unit activations in [0, 1] into a
face of a given subject; samplers build emotion images, AU-labelled images, expression clips and long
videos for spotting on top of it. See face.py for geometry and samples.py for the label rules.
"""

from .face import AUS, SIDES, Identity, Nuisance, identity, render_face, sample_nuisance
from .samples import (
    AU_INTENSITY_SCALE,
    AU_OCCURRENCE_THRESHOLD,
    EMOTION_PROTOTYPES,
    EMOTIONS,
    UNILATERAL_AUS,
    Clip,
    Event,
    LongVideo,
    au_occurrence,
    au_sample,
    emotion_aus,
    emotion_sample,
    emotion_sides,
    expression_clip,
    long_video,
)

__all__ = [
    "AUS", "SIDES", "EMOTIONS", "EMOTION_PROTOTYPES", "UNILATERAL_AUS", "AU_OCCURRENCE_THRESHOLD",
    "AU_INTENSITY_SCALE", "Identity", "Nuisance", "identity", "render_face", "sample_nuisance",
    "emotion_aus", "emotion_sides", "emotion_sample", "au_sample", "au_occurrence", "expression_clip",
    "long_video", "Clip", "Event", "LongVideo",
]
