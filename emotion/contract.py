"""The emotion model's ONNX contract: float RGB faces in [0, 1] -> class probabilities (softmax inside)."""
from common.contract import Contract, TensorSpec

CONTRACT = Contract(
    task="emotion",
    inputs=(TensorSpec("image", ("N", 3, 224, 224)),),
    outputs=(TensorSpec("probs", ("N", "C"), activation="softmax"),),
    layout="NCHW",
)
