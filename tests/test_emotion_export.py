"""Every emotion architecture exports through its LightningModule: 224x224 RGB in [0, 1] -> probs, matching
PyTorch under ONNX Runtime, with the contract's names, a dynamic batch axis and the module's metadata."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from common.export import export_module, verify
from emotion.data import EMOTION_CLASSES
from emotion.module import EmotionModule
from tests.conftest import exported_metadata

CLASSES = list(EMOTION_CLASSES[:7])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def calibrate_batchnorm(module: EmotionModule) -> None:
    """BatchNorm statistics of one batch of faces, as training would leave them: DAN's fresh statistics blow its
    logits up to ~1e4, where fp32 round-off alone exceeds the parity tolerance."""
    net = module.net.train()
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch the running statistics are the batch's
    with torch.no_grad():
        net(module.normalize(module.example_inputs(4)[0]))
    module.eval()


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch, model_kwargs", [
    ("posterpp", {}),
    ("posterpp", {"resize_mode": "nearest"}),  # the recipes' setting, as in the official code
    ("dan", {}),
    ("resnet18", {}),
], ids=["posterpp-bilinear", "posterpp-nearest", "dan", "resnet18"])
def test_module_exports_probs_matching_pytorch(arch, model_kwargs, tmp_path):
    torch.manual_seed(0)
    module = EmotionModule(class_names=CLASSES, image_size=224, arch=arch, model_kwargs=model_kwargs).eval()
    if arch == "dan":
        calibrate_batchnorm(module)
    path, graphs = export_module(module, tmp_path / f"{arch}.onnx", samples=2)
    report = verify(path, graphs.final, graphs.inputs, atol=1e-4, runs=1)
    assert report.max_abs_diff["probs"] <= 1e-4

    metadata = exported_metadata(path, "emotion")
    assert metadata["arch"] == arch and json.loads(metadata["classes"]) == CLASSES
    assert json.loads(metadata["input_size"]) == [224, 224]

    # a batch size other than the exported one, on a face the export never saw
    face = module.example_inputs(3)[0][2:]
    probs = session(path).run(["probs"], {"image": face.numpy()})[0]
    assert probs.shape == (1, len(CLASSES))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = module(face).softmax(-1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert probs.max() - probs.min() > 1e-4, "a constant output would pass parity trivially"
