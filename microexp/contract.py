"""The micro-expression model's ONNX contract: 16-frame clips of float RGB faces in [0, 1] -> class
probabilities (3, 5 or 7 classes by scheme; softmax inside)."""
from common.contract import Contract, TensorSpec

CONTRACT = Contract(
    task="microexp",
    inputs=(TensorSpec("clip", ("N", 16, 3, 224, 224)),),
    outputs=(TensorSpec("probs", ("N", "C"), activation="softmax"),),
    layout="NTCHW",
)
