"""The spotting model's ONNX contract: per-frame motion features of a video (any length T) -> per-frame scores in
[0, 1] for macro and micro actionness, start and end (metadata `score_names`); intervals are made from them by
spotting.postprocess, which the runtime shares."""
from common.contract import Contract, TensorSpec

CONTRACT = Contract(
    task="spotting",
    inputs=(TensorSpec("features", ("N", "T", "D")),),
    outputs=(TensorSpec("scores", ("N", "T", 6), activation="sigmoid"),),
    layout="NTD",
    labels_key="score_names",
    probe_scale=0.01,  # motion features lie near zero
)
