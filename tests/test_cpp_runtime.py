"""The C++ application side (runtime/cpp): builds facex_core and facex_conform with CMake into build/cpp, runs the
C++ unit tests against values the Python code produces here (clip-buffer frame numbers at 10/30/120 fps and
several strides, crops of a rotated, a shrunk, a frame-filling and a half-outside face, region boxes,
post-processing, streaming against offline spotting on synthetic long videos, AU columns, the contract tables),
and replays golden vectors of all four tasks with facex_conform.

The ONNX Runtime layer (hot reload under load, facex_run against `python -m runtime`) is built and tested when the
environment variable ONNXRUNTIME_ROOT names an ONNX Runtime SDK (include/onnxruntime_cxx_api.h, lib/libonnxruntime.so).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import tiny_onnx

ORT_ROOT = os.environ.get("ONNXRUNTIME_ROOT", "")
needs_ort = pytest.mark.skipif(not ORT_ROOT, reason="ONNXRUNTIME_ROOT does not name an ONNX Runtime SDK (headers + "
                                                    "libonnxruntime.so): the C++ ORT layer is not built")


def missing_toolchain() -> str:
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install -y g++ cmake libopencv-dev)"
    if not list(Path("/usr/include").glob("opencv4/opencv2/core.hpp")) and not os.environ.get("OpenCV_DIR"):
        return "OpenCV's development files not found (apt-get install -y libopencv-dev)"
    return ""


@pytest.fixture(scope="session")
def cpp_build():
    reason = missing_toolchain()
    if reason:
        pytest.skip(reason)
    from filelock import FileLock

    from bench.bench_cpp import BUILD, build

    BUILD.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(BUILD.parent / "cpp.lock")):  # one build at a time, whichever test worker asks first
        return build(ORT_ROOT)


# ---------------------------------------------------------------- cases the Python code produces


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def clip_buffer_cases() -> list[dict]:
    from runtime.stream import ClipBuffer

    cases = []
    for fps in (10.0, 30.0, 120.0):
        for stride in (1, 4, 8):
            for length, span in ((16, 0.5), (16, 15 / 200)):  # whole expressions; 16 frames around the apex at 200 fps
                buffer = ClipBuffer(length, span, fps, stride)
                pushed = [n for n in range(int(2.5 * fps)) if not 7 <= n % 50 < 11]  # frames without a face leave gaps
                clips = [buffer.sample_numbers().tolist() for n in pushed if buffer.push(np.zeros(1, np.uint8), n) is not None]
                if buffer.flush() is not None:
                    clips.append(buffer.sample_numbers().tolist())
                cases.append({"fps": fps, "stride": stride, "length": length, "span": span, "pushed": pushed,
                              "clips": clips})
    return cases


def rotated_face_frame(angle: float, face_side: int, frame: tuple[int, int], centre: tuple[float, float], seed: int):
    """A synthetic face of `face_side` px rotated by `angle` degrees about `centre` in a textured frame, and its
    five points (the template's points moved by the same transform)."""
    from common.data.align import template
    from common.synth import render_face

    rng = np.random.default_rng(seed)
    face = render_face({12: 0.6, 6: 0.4}, seed, size=face_side)
    canvas = rng.integers(0, 255, (*frame, 3), dtype=np.uint8)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 3)
    move = cv2.getRotationMatrix2D((face_side / 2, face_side / 2), angle, 1.0)
    move[:, 2] += np.array(centre) - face_side / 2
    mask = cv2.warpAffine(np.full((face_side, face_side), 255, np.uint8), move, frame[::-1])
    placed = cv2.warpAffine(face, move, frame[::-1])
    canvas[mask > 0] = placed[mask > 0]
    points = template(face_side, 0.0) @ move[:, :2].T + move[:, 2]
    return canvas, points


def write_crop_cases(folder: Path) -> None:
    from common.data.align import alignment_matrix, resize_matrix, warp

    cases = {
        "rotated": rotated_face_frame(25, 200, (480, 640), (300, 220), 1) + (224, 0.15),
        "shrunk": rotated_face_frame(-10, 640, (900, 1100), (520, 450), 2) + (112, 0.15),
        "half_outside": rotated_face_frame(5, 300, (480, 640), (40, 430), 3) + (224, 0.15),
    }
    for name, (frame, points, size, margin) in cases.items():
        matrix = alignment_matrix(points, size, margin)
        save_crop_case(folder / "crops" / name, frame, points, matrix, warp(frame, matrix, size), size, margin)
    frame = np.random.default_rng(4).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    matrix = resize_matrix(300, 400, 224)  # a frame that is the face: the crop-and-resize path
    save_crop_case(folder / "crops" / "frame_is_face", frame, None, matrix, warp(frame, matrix, 224), 224, 0.0)


def save_crop_case(folder: Path, frame, points, matrix, crop, size: int, margin: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "frame.npy", frame)
    if points is not None:
        np.save(folder / "points.npy", np.asarray(points, np.float64))
    np.save(folder / "matrix.npy", matrix)
    np.save(folder / "crop.npy", crop)
    # the same OpenCV code gives the same pixels; OpenCV releases may round a bilinear sample differently
    write_json(folder / "settings.json", {"size": size, "margin": margin, "tolerance": 2})


def region_cases() -> list[dict]:
    from spotting.features import FeatureSettings, region_boxes

    cases = []
    for settings in (FeatureSettings(), FeatureSettings(size=64, margin=0.1),
                     FeatureSettings(size=96, margin=0.25, regions=("nose_root", "brow_inner", "mouth_left", "chin"))):
        cases.append({"settings": settings.to_dict(), "boxes": [list(map(int, b)) for b in region_boxes(settings)]})
    return cases


def postprocess_cases() -> list[dict]:
    from spotting.postprocess import SpotSettings, plausible_lengths, spot

    rng = np.random.default_rng(7)
    cases = []
    for case in range(12):
        frames, step = 400, 1 + case % 3
        t = np.arange(frames)
        scores = np.zeros((frames, 6), np.float32)
        for column in range(6):
            centres = rng.uniform(0, frames, 6)
            widths = rng.uniform(2, 25, 6)
            bumps = sum(rng.uniform(0.2, 1) * np.exp(-0.5 * ((t - c) / w) ** 2) for c, w in zip(centres, widths))
            scores[:, column] = np.clip(bumps + 0.05 * rng.random(frames), 0, 1)
        fps = 30.0
        settings = SpotSettings({"macro": float(rng.uniform(0.2, 0.6)), "micro": float(rng.uniform(0.2, 0.6))},
                                plausible_lengths(fps * step), float(rng.choice([0.4, 0.5, 0.6])),
                                {"macro": int(rng.integers(1, 10)), "micro": int(rng.integers(1, 10))})
        numbers = np.arange(0, frames * step, step) + 3
        found = spot(scores, numbers, settings, step)
        cases.append({"scores": scores.ravel().tolist(), "numbers": numbers.tolist(), "step": step,
                      "settings": {"thresholds": dict(settings.thresholds), "boundary": settings.boundary,
                                   "lengths": {k: list(v) for k, v in settings.lengths.items()},
                                   "min_gap": dict(settings.min_gap)},
                      "intervals": [vars(i) for i in found]})
    assert sum(len(c["intervals"]) for c in cases) > 20, "the cases must exercise the rules"
    return cases


def write_streaming_cases(folder: Path, models: Path) -> None:
    from common.synth import long_video
    from runtime.model import Model
    from runtime.stream import StreamingSpotter, feature_settings, spot_settings
    from spotting.postprocess import spot

    for name, fps, seconds, chunk, method in (("dis_30fps", 30.0, 24.0, 64, "dis"), ("dis_60fps", 60.0, 14.0, 16, "dis"),
                                              ("farneback_30fps", 30.0, 16.0, 32, "farneback")):
        model = Model(models / f"spotting_{method}.onnx", providers=["CPUExecutionProvider"])
        video = long_video(21, 2, fps=fps, seconds=seconds, size=feature_settings(model.metadata).size)
        faces = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video.frames()])
        streaming = StreamingSpotter(lambda x: model.predict(x)["scores"], model.metadata, fps, chunk=chunk)
        for number, face in enumerate(faces):
            streaming.push(face, number)
        streaming.flush()
        features = streaming.features
        scores = model.predict(features[None])["scores"][0]
        kept = np.arange(0, len(faces), streaming.step)
        offline = spot(scores, kept, spot_settings(model.metadata, fps / streaming.step, streaming.step), streaming.step)
        case = folder / "streaming" / name
        case.mkdir(parents=True, exist_ok=True)
        np.save(case / "faces.npy", faces)
        np.save(case / "numbers.npy", np.arange(len(faces), dtype=np.int64))
        np.save(case / "features.npy", features)
        np.save(case / "scores.npy", scores)
        write_json(case / "offline.json", [vars(i) for i in offline])
        metadata = model.metadata
        write_json(case / "spec.json", {
            "feature_settings": json.loads(metadata["feature_settings"]), "thresholds": json.loads(metadata["thresholds"]),
            "boundary": float(metadata["boundary"]), "min_gap_seconds": float(metadata["min_gap_seconds"]),
            "receptive_radius": int(metadata["receptive_radius"]), "fps": fps, "chunk": chunk,
            "feature_tolerance": feature_tolerance(method, cv2.__version__), "opencv": cv2.__version__})


def feature_tolerance(method: str, python_opencv: str) -> float:
    """Farneback flow differs between builds of OpenCV only in float rounding (1e-5 px), so features agree to
    about 1e-7; OpenCV's DIS changed between releases (4.6 against 4.14: up to 0.07 px of flow, 3e-3 in features),
    so DIS features agree that closely only where both sides use the same OpenCV."""
    from runtime.vectors import DIS_TOLERANCE

    return 1e-7 if method == "farneback" else DIS_TOLERANCE[0] if python_opencv == cpp_opencv() else DIS_TOLERANCE[1]


def cpp_opencv() -> str:
    found = list(Path("/usr/include/opencv4/opencv2/core").glob("version.hpp"))
    if not found:
        return ""
    text = found[0].read_text()
    parts = [text.split(f"#define CV_VERSION_{k} ")[1].split()[0] for k in ("MAJOR", "MINOR", "REVISION")]
    return ".".join(parts)


def au_case() -> dict:
    from au.contract import openface_columns

    rng = np.random.default_rng(3)
    aus = [f"AU{a:02d}" for a in (1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 17, 20, 23, 24, 25, 26, 27)]
    prob, intensity = rng.random((1, 17)).astype(np.float32), (5 * rng.random((1, 17))).astype(np.float32)
    columns = openface_columns(prob, intensity, aus, 0.5)
    return {"aus": aus, "threshold": 0.5, "prob": prob[0].tolist(), "intensity": intensity[0].tolist(),
            "columns": [[name, float(value[0])] for name, value in columns.items()]}


def write_face_cases(folder: Path) -> None:
    """dlib's five points on a real photograph (skimage's astronaut, rolled 15 degrees) and on synthetic faces,
    as common.data.align finds them, with the landmark model file the C++ side must load."""
    from common.data.align import DlibDetector, dlib_available, dlib_model_file

    if not dlib_available():
        return
    from skimage import data

    detector = DlibDetector()
    photo = cv2.resize(data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    rolled = cv2.warpAffine(photo, cv2.getRotationMatrix2D((256, 256), 15, 1.0), (512, 512),
                            borderMode=cv2.BORDER_REPLICATE)
    from common.synth import emotion_sample

    images = {"astronaut": rolled, "synthetic": emotion_sample(subject=3, label=1, seed=3, size=224)[0]}
    for name, image in images.items():
        case = folder / "faces" / name
        case.mkdir(parents=True, exist_ok=True)
        np.save(case / "image.npy", np.ascontiguousarray(image))
        np.save(case / "points.npy", detector(image))
    write_json(folder / "faces" / "model.json", {"landmarks": str(dlib_model_file("shape_predictor_68_face_landmarks.dat"))})


def contract_tables() -> dict:
    from common.contract import METADATA_KEYS
    from common.tasks import TASKS

    tables = {}
    for name, spec in TASKS.items():
        contract = spec.contract_object()
        tables[name] = {role: [{"name": t.name, "shape": list(t.shape), "activation": t.activation}
                               for t in getattr(contract, role)] for role in ("inputs", "outputs")}
    return {"metadata_keys": list(METADATA_KEYS), "tasks": tables}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tiny_onnx.every_task(tmp_path_factory.mktemp("cpp_models"))
    (folder / "extra").mkdir()
    tiny_onnx.spotting(folder / "extra" / "spotting_dis.onnx")
    tiny_onnx.spotting(folder / "extra" / "spotting_farneback.onnx", method="farneback")
    return folder


@pytest.fixture(scope="module")
def cases(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("cpp_cases")
    write_json(folder / "clip_buffer.json", clip_buffer_cases())
    write_crop_cases(folder)
    write_json(folder / "regions.json", region_cases())
    write_json(folder / "postprocess.json", postprocess_cases())
    write_streaming_cases(folder, models / "extra")
    write_json(folder / "au.json", au_case())
    write_face_cases(folder)
    write_json(folder / "contracts.json", contract_tables())
    return folder


def test_cpp_core_units_agree_with_python(cpp_build, cases):
    result = subprocess.run(["ctest", "--test-dir", str(cpp_build), "--output-on-failure", "-R", "core"],
                            capture_output=True, text=True, env={**os.environ, "FACEX_CASES": str(cases)})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    direct = subprocess.run([str(cpp_build / "facex_core_tests")], capture_output=True, text=True,
                            env={**os.environ, "FACEX_CASES": str(cases)})
    assert direct.returncode == 0 and ", 0 failed" in direct.stdout, direct.stdout[-4000:]
    assert int(direct.stdout.split(" checks")[0].split()[-1]) >= 40, direct.stdout


# ---------------------------------------------------------------- golden vectors


def short_video(path: Path, seconds: float = 3.0) -> Path:
    from common.synth import long_video

    video = long_video(5, 0, fps=30.0, seconds=seconds, size=160)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (160, 160))
    for frame in video.frames():
        writer.write(frame[:, :, ::-1])
    writer.release()
    return path


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, models):
    from runtime.vectors import main

    folder = tmp_path_factory.mktemp("vectors")
    video = short_video(folder / "clip.mp4")
    assert main(["--models", str(models), "--video", str(video), "--out", str(folder / "v"), "--frames", "90",
                 "--detector", "tiny_onnx:flat_aware_detector"]) == 0
    return folder / "v"


def conform(cpp_build, vectors, *extra):
    return subprocess.run([str(cpp_build / "facex_conform"), str(vectors), *extra], capture_output=True, text=True)


def test_conformance_replays_the_golden_vectors_of_all_four_tasks(cpp_build, vectors):
    result = conform(cpp_build, vectors)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    stages = {tuple(line.split()[:2]) for line in lines}
    for task in ("emotion", "au", "microexp", "spotting"):
        assert {(task, "contract"), (task, "matrix"), (task, "crop")} <= stages, task
    assert {("emotion", "input"), ("au", "columns"), ("microexp", "clip_numbers"), ("microexp", "input"),
            ("spotting", "features"), ("spotting", "intervals"), ("spotting", "streaming")} <= stages
    assert all(line.endswith(" ok") for line in lines)
    assert json.loads((vectors / "spotting" / "intervals.json").read_text()), "the vectors must hold intervals to replay"


def test_conformance_fails_where_a_stage_differs(cpp_build, vectors, tmp_path):
    broken = tmp_path / "v"
    shutil.copytree(vectors, broken)
    crop = np.load(broken / "au" / "crop.npy")
    crop[10:20, 10:20] = 255 - crop[10:20, 10:20]
    np.save(broken / "au" / "crop.npy", crop)
    model = json.loads((broken / "emotion" / "model.json").read_text())
    model["inputs"][0]["shape"][2] = 112
    (broken / "emotion" / "model.json").write_text(json.dumps(model))
    result = conform(cpp_build, broken)
    assert result.returncode == 2 and "image axis 2 is 112, the contract says 224" in result.stderr
    (broken / "emotion" / "model.json").write_text((vectors / "emotion" / "model.json").read_text())
    result = conform(cpp_build, broken)
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.endswith("FAILED")][0].split()[:2] == ["au", "crop"]


def test_a_model_without_an_align_template_is_served(cpp_build, vectors, tmp_path):
    """The crop is the template of the model's size and margin; the template in the metadata is informational and
    absent where a model was exported without a data module's preprocessing record."""
    copy = tmp_path / "v"
    shutil.copytree(vectors, copy)
    model = json.loads((copy / "au" / "model.json").read_text())
    model["metadata"].update(align_template="", align_margin="")
    (copy / "au" / "model.json").write_text(json.dumps(model))
    result = conform(cpp_build, copy)
    # read without an error; with margin 0 now, the alignment (and only it) differs from the stored one
    assert result.returncode == 1 and not result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines() if line.endswith("FAILED")] == [["au", "matrix"]]


def test_contract_tables_equal_pythons(cpp_build):
    result = subprocess.run([str(cpp_build / "facex_conform"), "--contracts"], capture_output=True, text=True)
    ours = json.loads(result.stdout)
    python = contract_tables()
    assert ours["metadata_keys"] == python["metadata_keys"]
    for task, tables in python["tasks"].items():
        for role in ("inputs", "outputs"):
            assert [{k: t[k] for k in ("name", "shape", "activation")} for t in ours["tasks"][task][role]] == tables[role]


# ---------------------------------------------------------------- the ONNX Runtime layer


@needs_ort
def test_ort_conformance_runs_each_model_on_its_stored_input(cpp_build, vectors, models):
    result = conform(cpp_build, vectors, "--models", str(models))
    assert result.returncode == 0, result.stdout + result.stderr
    ran = {tuple(line.split()[:3]) for line in result.stdout.splitlines() if "(ORT)" in line}
    assert {("emotion", "probs", "(ORT)"), ("au", "au_prob", "(ORT)"), ("microexp", "probs", "(ORT)"),
            ("spotting", "scores", "(ORT)")} <= ran


@needs_ort
def test_ort_hot_reload_under_load_never_fails_a_call(cpp_build, tmp_path):
    tiny_onnx.emotion(tmp_path / "emotion_a.onnx", seed=0)
    tiny_onnx.emotion(tmp_path / "emotion_b.onnx", seed=5)
    tiny_onnx.au(tmp_path / "au.onnx")
    result = subprocess.run(["ctest", "--test-dir", str(cpp_build), "--output-on-failure", "-R", "ort"],
                            capture_output=True, text=True, env={**os.environ, "FACEX_ORT_CASES": str(tmp_path)},
                            timeout=300)
    assert result.returncode == 0, result.stdout[-5000:]


def read_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def same_cells(python: list[dict], cpp: list[dict], tolerance: float = 1e-4) -> list[str]:
    """Where two CSV tables differ: numbers beyond the tolerance, text that is not equal."""
    problems = []
    if [list(r) for r in python[:1]] != [list(r) for r in cpp[:1]] or len(python) != len(cpp):
        return [f"header or row count: {list(python[0]) if python else []} ({len(python)}) against "
                f"{list(cpp[0]) if cpp else []} ({len(cpp)})"]
    for i, (a, b) in enumerate(zip(python, cpp)):
        for key in a:
            try:
                far = abs(float(a[key]) - float(b[key])) > tolerance
            except ValueError:
                far = a[key] != b[key]
            if far:
                problems.append(f"row {i} {key}: {a[key]!r} against {b[key]!r}")
    return problems


@needs_ort
def test_facex_run_writes_what_the_python_runtime_writes(cpp_build, tmp_path):
    from runtime.__main__ import main as python_runtime

    folder = tmp_path / "models"
    tiny_onnx.emotion(folder / "emotion.onnx")
    tiny_onnx.au(folder / "au.onnx")
    tiny_onnx.microexp(folder / "microexp.onnx")
    # Farneback flow differs between OpenCV builds in float rounding only, so both sides spot on the same features
    # to about 1e-7; an unsaturated head keeps peaks apart (two equal peaks could go either way)
    tiny_onnx.spotting(folder / "spotting.onnx", method="farneback", head_scale=6.0, threshold=0.6)
    video = short_video(tmp_path / "clip.mp4", seconds=12.0)
    assert python_runtime([str(video), "--models", str(folder), "--out", str(tmp_path / "py" / "results.csv"),
                           "--detector", "none", "--providers", "CPUExecutionProvider"]) == 0
    result = subprocess.run([str(cpp_build / "facex_run"), str(video), "--models", str(folder), "--out",
                             str(tmp_path / "cpp" / "results.csv"), "--detector", "none", "--cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ("results.csv", "results_intervals.csv", "results_strs.csv"):
        python, cpp = read_rows(tmp_path / "py" / name), read_rows(tmp_path / "cpp" / name)
        assert python or name != "results_intervals.csv", "the video must hold spotted intervals"
        assert same_cells(python, cpp) == [], name
    rows = read_rows(tmp_path / "cpp" / "results.csv")
    assert sum(bool(r["micro_class"]) for r in rows) >= 10 and sum(r["face"] == "1" for r in rows) == len(rows)
