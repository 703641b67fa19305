"""`python -m runtime.check MODEL.onnx [--json]`: is this file a model the application can run, and how to feed it.

Validates the file with the contract's check (`common.contract.check_file`, the one `common.export` runs on what it
writes): input and output names, ranks, fixed dimensions and float32 types, the metadata every model carries, the
labels (class names or AU names that match the output width), and the value ranges of the outputs on a probe input
(probabilities that sum to 1, sigmoid scores in [0, 1], AU intensities in [0, 5]). Then prints what a C++ consumer
needs: inputs, outputs, the preprocessing in order, labels, fps and clip sampling.

Exit status: 0 the model is valid; 1 it was read but breaks the contract (the message says how); 2 the file cannot
be read (missing, truncated, not ONNX).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

# the check itself is the contract's (export runs it on every file it writes); served from here too
from common.contract import ContractBroken, ModelInfo, UnreadableModel, check_file  # noqa: F401

REFUSED, UNREADABLE = 1, 2


def preprocessing_steps(info: ModelInfo) -> list[str]:
    m = info.metadata
    settings = json.loads(m.get("feature_settings", "{}") or "{}") if info.task == "spotting" else {}
    size = f"{settings.get('size')} x {settings.get('size')} px" if settings else m.get("input_size", "")
    steps = [f"detect the face: {m.get('face_detector', '')}",
             f"landmarks: {m.get('landmark_scheme', '')}",
             f"align: similarity transform of the 5 points onto align_template {m.get('align_template', '')} "
             f"(input pixels; margin {m.get('align_margin', '')})",
             f"crop and resize to {size}: {m.get('resize_interpolation', '')}"]
    if info.task == "spotting":
        steps += [f"grey face; subsample to about {settings.get('target_fps')} fps",
                  f"optical flow ({settings.get('method')}) between frames k apart (k = {settings.get('k') or '0.1 s'})",
                  f"pool over regions {settings.get('regions')}, minus the reference region's motion, divided by the "
                  f"inter-ocular distance; features in the order of `names`",
                  "scores -> intervals: spotting.postprocess.spot with metadata thresholds, boundary, min_gap_seconds"]
    else:
        steps += [f"colour order RGB, layout {m.get('input_layout', '')}, values {m.get('input_range', '')}",
                  f"normalisation: {m.get('normalisation', '')}"]
    if info.task == "microexp":
        steps.append(f"clip: {m.get('clip_length', '')} frames, {m.get('clip_sampling', '')}; fps {m.get('fps', '')}")
    return steps


def info_dict(info: ModelInfo) -> dict:
    return {"path": str(info.path), "task": info.task, "inputs": info.inputs, "outputs": info.outputs,
            "labels": info.labels, "preprocessing": preprocessing_steps(info), "fps": info.metadata.get("fps", ""),
            "clip_length": info.metadata.get("clip_length", ""),
            "clip_sampling": info.metadata.get("clip_sampling", ""),
            "outputs_are_probabilities": info.metadata.get("output_activation", "")}


def describe(info: ModelInfo) -> str:
    lines = [f"{info.path}: valid {info.task} model"]
    lines += [f"input  {t['name']} {t['shape']} {t['dtype']}" for t in info.inputs]
    lines += [f"output {t['name']} {t['shape']} {t['dtype']}" for t in info.outputs]
    lines.append(f"outputs: {info.metadata.get('output_activation', '')}")
    lines.append("preprocessing, in order:")
    lines += [f"  {i}. {step}" for i, step in enumerate(preprocessing_steps(info), start=1)]
    lines.append(f"labels: {', '.join(info.labels)}")
    if info.metadata.get("fps"):
        lines.append(f"fps: {info.metadata['fps']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.check", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        info = check_file(args.model)
    except UnreadableModel as error:
        print(f"unreadable: {error}", file=sys.stderr)
        return UNREADABLE
    except ContractBroken as error:
        print(f"refused: {error}", file=sys.stderr)
        return REFUSED
    print(json.dumps(info_dict(info), indent=2) if args.json else describe(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
