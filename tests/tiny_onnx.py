"""Tiny contract-valid ONNX models of each task, built directly with onnx.helper (kilobytes, milliseconds), for the
runtime's tests: a different `seed` gives a different model of the same task."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.contract import CONTRACT_VERSION, METADATA_KEYS

EMOTIONS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
AUS = ["AU01", "AU02", "AU04", "AU06", "AU12"]
MICRO = ["negative", "positive", "surprise"]
TEMPLATE = [[86.8, 101.6], [137.2, 101.4], [112.1, 129.8], [91.4, 159.3], [133.1, 159.1]]


def base_metadata(task: str, **extra) -> dict[str, str]:
    values = {key: "" for key in METADATA_KEYS}
    values.update({"task": task, "version": "test", "contract_version": CONTRACT_VERSION, "training_config": "{}",
                   "input_range": "[0, 1]", "normalisation": "inside the graph", "face_detector": "none",
                   "landmark_scheme": "5 points", "align_template": json.dumps(TEMPLATE), "align_margin": "0.15",
                   "resize_interpolation": "area / bilinear"})
    values.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return values


def _save(path: Path, graph, metadata: dict[str, str]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _weights(seed: int, *shape) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def image_classifier(path, task: str, classes, size: int, seed: int = 0, clip: int | None = None) -> Path:
    """Mean colour (of every frame for a clip) -> linear -> softmax."""
    name = "clip" if clip else "image"
    shape = ["N", clip, 3, size, size] if clip else ["N", 3, size, size]
    axes = [1, 3, 4] if clip else [2, 3]
    nodes = [helper.make_node("ReduceMean", [name], ["mean"], axes=axes, keepdims=0),
             helper.make_node("Gemm", ["mean", "W", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, f"tiny_{task}", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(classes)])],
        [numpy_helper.from_array(10 * _weights(seed, 3, len(classes)), "W"),
         numpy_helper.from_array(_weights(seed + 1, len(classes)), "b")])
    extra = {"classes": list(classes), "input_size": [size, size], "output_activation": "softmax"}
    if clip:
        extra.update({"clip_length": str(clip), "fps": {"casme2": 200.0},
                      "clip_sampling": f"{clip} frames, uniform from onset to offset"})
    return _save(path, graph, base_metadata(task, **extra))


def emotion(path, seed: int = 0) -> Path:
    return image_classifier(path, "emotion", EMOTIONS, 224, seed)


def microexp(path, seed: int = 0) -> Path:
    return image_classifier(path, "microexp", MICRO, 224, seed, clip=16)


def au(path, seed: int = 0) -> Path:
    k = len(AUS)
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["mean", "W", "b"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["au_prob"]),
             helper.make_node("Gemm", ["mean", "W2", "b"], ["z2"]),
             helper.make_node("Sigmoid", ["z2"], ["s2"]),
             helper.make_node("Mul", ["s2", "five"], ["raw"]),
             helper.make_node("GreaterOrEqual", ["au_prob", "half"], ["on"]),
             helper.make_node("Cast", ["on"], ["onf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["raw", "onf"], ["au_intensity"])]
    graph = helper.make_graph(
        nodes, "tiny_au", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 256, 256])],
        [helper.make_tensor_value_info("au_prob", TensorProto.FLOAT, ["N", k]),
         helper.make_tensor_value_info("au_intensity", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(10 * _weights(seed, 3, k), "W"),
         numpy_helper.from_array(10 * _weights(seed + 2, 3, k), "W2"),
         numpy_helper.from_array(_weights(seed + 1, k), "b"), numpy_helper.from_array(np.array(5.0, np.float32), "five"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    return _save(path, graph, base_metadata("au", classes=AUS, aus=AUS, input_size=[256, 256], threshold="0.5",
                                            output_activation="sigmoid"))


def spotting(path, seed: int = 0, head_scale: float = 20.0, threshold: float = 0.7, method: str = "dis") -> Path:
    """The project's temporal spotter, untrained but with a sharpened head so that its scores have peaks, exported
    through common.export (receptive radius 66: streaming has to window it); `method` is its optical flow."""
    import torch

    from common.export import export_module
    from spotting.features import FeatureSettings
    from spotting.module import SpottingModule

    torch.manual_seed(seed)
    module = SpottingModule(features=FeatureSettings(detector="none", method=method).to_dict()).eval()
    with torch.no_grad():
        module.net.head.weight.mul_(head_scale)
        module.net.feature_std.fill_(0.003)
        module.thresholds.fill_(threshold)
    export_module(module, path, samples=1)
    return Path(path)


def flat_aware_detector():
    """A detector plug-in for tests: five points at typical positions of a frame-filling face, None for a flat
    (blank) frame."""
    from common.data.align import BOX_FRACTIONS

    def detect(rgb):
        if rgb.std() < 2:
            return None
        height, width = rgb.shape[:2]
        return BOX_FRACTIONS * np.array([width, height], np.float64)

    return detect


def every_task(folder) -> Path:
    """A folder with one tiny model of each task, as `python -m runtime --models` reads it."""
    folder = Path(folder)
    emotion(folder / "emotion.onnx")
    au(folder / "au.onnx")
    microexp(folder / "microexp.onnx")
    spotting(folder / "spotting.onnx")
    return folder
