"""The action-unit model's ONNX contract: float RGB faces in [0, 1] -> AU probabilities and intensities (0-5) for
the K AUs the model was trained on (17 in the application's recipe)."""
from common.contract import Contract, TensorSpec

CONTRACT = Contract(
    task="au",
    inputs=(TensorSpec("image", ("N", 3, 256, 256)),),
    outputs=(TensorSpec("au_prob", ("N", "K")), TensorSpec("au_intensity", ("N", "K"))),
    layout="NCHW",
)
