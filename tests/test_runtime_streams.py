"""Streaming spotting against offline spotting, spot-then-recognise scored as STRS, the command line on a short
video (frames without a face included) and the golden vectors."""
import csv
import json

import cv2
import numpy as np
import pytest

import tiny_onnx
from common.synth import EMOTIONS, long_video
from runtime.model import Model
from runtime.stream import STRS_COLUMNS, SpotThenRecognise, StreamingSpotter, spot_settings, strs_rows
from spotting.evaluate import main as evaluate_main
from spotting.features import FeatureSettings, extract
from spotting.postprocess import spot


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_onnx.every_task(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def video():
    synthetic = long_video(5, 0, fps=30.0, seconds=30.0, size=128)
    return synthetic, synthetic.frames()


def test_streaming_spotting_equals_offline(models, video):
    synthetic, frames = video
    model = Model(models / "spotting.onnx", providers=["CPUExecutionProvider"])
    offline_features = extract(lambda p: frames[np.asarray(p)], np.arange(len(frames)), 30.0,
                               FeatureSettings(detector="none"))
    scores = model.predict(offline_features.features[None])["scores"][0]
    offline = spot(scores, offline_features.numbers, spot_settings(model.metadata, 30.0, 1))

    streaming = StreamingSpotter(lambda x: model.predict(x)["scores"], model.metadata, 30.0, chunk=32)
    emitted, early = [], 0
    for number, rgb in enumerate(frames):
        found = streaming.push(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), number)
        emitted += found
        early += len(found)
    emitted += streaming.flush()
    assert len(offline) > 5 and emitted == offline
    assert early > 0  # intervals come out while the video plays, not only at the end
    assert np.abs(streaming.scores - scores).max() < 1e-5


def test_spot_then_recognise_writes_strs_that_the_evaluation_scores(models, video, tmp_path, capsys):
    synthetic, frames = video
    spotter_model = Model(models / "spotting.onnx", providers=["CPUExecutionProvider"])
    micro = Model(models / "microexp.onnx", providers=["CPUExecutionProvider"])
    spotter = StreamingSpotter(lambda x: spotter_model.predict(x)["scores"], spotter_model.metadata, 30.0)
    recogniser = SpotThenRecognise(lambda clip: micro.predict(clip)["probs"], json.loads(micro.metadata["classes"]),
                                   history=len(frames))
    recognised = []
    faces = [cv2.resize(f, (224, 224), interpolation=cv2.INTER_LINEAR) for f in frames]
    intervals = []
    for number, (rgb, face) in enumerate(zip(frames, faces)):
        recogniser.push(face, number)
        intervals += spotter.push(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), number)
    intervals += spotter.flush()
    recognised = [recogniser.recognise(i) for i in intervals if i.type == "micro"]
    assert recognised and all(r is not None and r.emotion in ("negative", "positive", "surprise") for r in recognised)
    rows = strs_rows("s5", "v0", recognised)
    with open(tmp_path / "pred.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=STRS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "gt.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=STRS_COLUMNS)
        writer.writeheader()
        writer.writerows({"subject": "s5", "video": "v0", "onset": e.onset, "offset": e.offset,
                          "emotion": EMOTIONS[e.emotion]} for e in synthetic.events if e.kind == "micro")
    assert evaluate_main(["--strs", "--gt", str(tmp_path / "gt.csv"), "--pred", str(tmp_path / "pred.csv"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["tp"] + scores["fp"] == len(rows)
    assert scores["tp"] + scores["fn"] == sum(e.kind == "micro" for e in synthetic.events)


def short_video(path, frames, blank=range(20, 25)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (128, 128))
    for n, rgb in enumerate(frames):
        writer.write(np.full_like(rgb, 90) if n in blank else rgb[:, :, ::-1])
    writer.release()
    return path


def test_command_line_writes_every_frame(models, video, tmp_path):
    from runtime.__main__ import main

    path = short_video(tmp_path / "clip.mp4", video[1][:120])
    out = tmp_path / "results.csv"
    assert main([str(path), "--models", str(models), "--out", str(out), "--detector", "tiny_onnx:flat_aware_detector",
                 "--annotate", str(tmp_path / "annotated.mp4")]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(120))
    header = list(rows[0])
    assert {"time", "face", "face_x", "emotion", "p_happiness", "AU01_r", "AU12_c", "AU04_p", "micro_class",
            "micro_p_surprise", "spotted"} <= set(header)
    assert header.index("AU12_r") < header.index("AU01_c")  # OpenFace order
    blank = [r for r in rows if 20 <= int(r["frame"]) < 25]
    assert all(r["face"] == "0" and r["p_happiness"] == "" and r["AU01_c"] == "" for r in blank)
    faces = [r for r in rows if r["face"] == "1"]
    assert len(faces) == 115 and all(r["emotion"] and r["AU01_c"] in ("0", "1") for r in faces)
    assert sum(bool(r["micro_class"]) for r in rows) >= 5
    intervals = (tmp_path / "results_intervals.csv").read_text().splitlines()
    assert intervals[0] == "vid,onset,offset,type,apex,score,onset_s,apex_s,offset_s"
    assert (tmp_path / "results_strs.csv").read_text().splitlines()[0] == ",".join(STRS_COLUMNS)
    annotated = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 120


def test_a_refused_model_is_named_and_the_others_are_served(models, video, tmp_path, capsys):
    import shutil

    from runtime.__main__ import main

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(models / "emotion.onnx", folder / "emotion.onnx")
    (folder / "au.onnx").write_bytes((models / "au.onnx").read_bytes()[:300])  # cut short
    path = short_video(tmp_path / "clip.mp4", video[1][:10], blank=())
    out = tmp_path / "results.csv"
    args = [str(path), "--models", str(folder), "--out", str(out), "--detector", "none"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "runtime: not serving au.onnx:" in err and "Traceback" not in err
    header = out.read_text().splitlines()[0].split(",")
    assert "p_happiness" in header and not any(c.startswith("AU01") for c in header)
    assert main([*args, "--strict"]) == 2
    assert "au.onnx" in capsys.readouterr().err
    (folder / "emotion.onnx").write_bytes(b"not a model")
    assert main(args) == 2
    assert "no model can be served" in capsys.readouterr().err


def test_ctrl_c_keeps_the_rows_written_and_says_so_in_one_line(models, video, tmp_path, capsys, monkeypatch):
    from runtime import pipeline
    from runtime.__main__ import INTERRUPTED, main

    original = pipeline.Pipeline.frame

    def frame(self, rgb, number):
        if number == 7:
            raise KeyboardInterrupt
        return original(self, rgb, number)

    monkeypatch.setattr(pipeline.Pipeline, "frame", frame)
    path = short_video(tmp_path / "clip.mp4", video[1][:20], blank=())
    out = tmp_path / "results.csv"
    assert main([str(path), "--models", str(models), "--out", str(out), "--detector", "none"]) == INTERRUPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("runtime: interrupted after 7 frames") and str(out) in err[-1]
    assert not any("Traceback" in line for line in err)
    assert len(out.read_text().splitlines()) == 1 + 7


def test_progress_is_plain_lines_in_a_log(capsys):
    from common.console import Progress

    meter = Progress(total=50, unit="frames", every=0.0)  # stderr is captured here: not a terminal
    for frames in (10, 20):
        meter.update(frames)
    meter.close(20)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" frames")[0] for line in lines] == ["10/50", "20/50", "20"] and "\r" not in "".join(lines)


def test_golden_vectors_are_reproduced_by_a_reader(models, video, tmp_path):
    from runtime.vectors import check_vectors, main

    path = short_video(tmp_path / "clip.mp4", video[1][:60], blank=range(0, 2))
    out = tmp_path / "vectors"
    assert main(["--models", str(models), "--video", str(path), "--out", str(out), "--frames", "60",
                 "--detector", "tiny_onnx:flat_aware_detector"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["first_face_frame"] == 2
    stages = {(e["task"], e["stage"]) for e in index["entries"]}
    for task in ("emotion", "au", "microexp", "spotting"):
        assert {(task, "frame"), (task, "crop"), (task, "input")} <= stages
    assert {("au", "columns"), ("microexp", "clip_numbers"), ("spotting", "intervals"), ("emotion", "probs")} <= stages
    assert np.load(out / "microexp" / "input.npy").shape == (1, 16, 3, 224, 224)
    assert check_vectors(out, models) == []
    probs = np.load(out / "emotion" / "probs.npy")
    np.save(out / "emotion" / "probs.npy", probs[:, ::-1])
    assert any("emotion probs" in p for p in check_vectors(out, models))
