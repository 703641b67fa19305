"""The learned spotter on synthetic long videos: finds the planted events and beats the optical-flow baseline on
held-out subjects; its files score the same with `spotting.evaluate`; the export runs at any length T."""
import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from spotting.data import SpottingDataModule
from spotting.evaluate import main as evaluate_main
from spotting.module import SpottingModule


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("spotting")
    L.seed_everything(0)
    data = SpottingDataModule(subjects=(8, 2, 3), seconds=60, feature_cache=str(root / "cache"), batch_size=8,
                              num_workers=0)
    model = SpottingModule(feature_dim=data.feature_dim, features=data.features, preprocessing=data.preprocessing,
                           width=32, lr=3e-3, warmup_epochs=1)
    trainer = L.Trainer(max_epochs=15, logger=L.pytorch.loggers.CSVLogger(root, name="run"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, data)
    results = trainer.test(model, data, verbose=False)[0]
    return {"model": model, "data": data, "trainer": trainer, "results": results, "root": root,
            "run": Path(trainer.log_dir)}


def test_learned_spotter_finds_the_events_and_beats_the_baseline(trained):
    results = trained["results"]
    assert results["test/recall"] > 0.5 and results["test/f1"] > 0.5
    assert results["test/f1"] > results["test/baseline_f1"] + 0.15
    # thresholds were chosen on validation subjects, none of which is tested
    data = trained["data"]
    assert not {v.subject for v in data.val_videos} & {v.subject for v in data.test_videos}
    assert not {v.subject for v in data.train_videos} & {v.subject for v in data.test_videos}
    assert all(0 < t < 1 for t in trained["model"].thresholds.tolist())


def test_submission_files_score_as_logged(trained, capsys):
    run = trained["run"]
    with open(run / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) >= {"vid", "onset", "offset", "type"} and {r["type"] for r in rows} <= {"me", "mae"}
    for name, prefix in (("predictions.csv", "test/"), ("baseline_predictions.csv", "test/baseline_")):
        assert evaluate_main(["--gt", str(run / "ground_truth.csv"), "--pred", str(run / name), "--json"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert scores["overall"]["f1"] == pytest.approx(trained["results"][f"{prefix}f1"], abs=1e-6)
        assert scores["micro"]["f1"] == pytest.approx(trained["results"][f"{prefix}f1_micro"], abs=1e-6)


def test_a_video_file_is_spotted_from_a_notebook(trained, tmp_path):
    import cv2

    from common.synth import long_video
    from spotting.evaluate import Spot, megc_scores

    video = long_video(40, 1, fps=30.0, seconds=20.0, size=128)
    path = tmp_path / "held_out.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (128, 128))
    for frame in video.frames():
        writer.write(frame[:, :, ::-1])
    writer.release()
    found = trained["model"].spot_video(path, detector="none")
    assert found and all(i.onset <= i.apex <= i.offset < video.n_frames and i.type in ("macro", "micro") for i in found)
    truth = [Spot("v", e.onset, e.offset, e.kind) for e in video.events]
    assert megc_scores(truth, [Spot("v", i.onset, i.offset, i.type) for i in found])["overall"]["recall"] > 0


def test_export_runs_at_two_lengths(trained, tmp_path):
    import onnxruntime as ort

    from common.contract import check_file
    from common.export import export_checkpoint

    trainer, model = trained["trainer"], trained["model"]
    checkpoint = tmp_path / "spotter.ckpt"
    trainer.save_checkpoint(checkpoint)
    report = export_checkpoint(checkpoint, tmp_path / "spotter.onnx")
    assert report.task == "spotting" and report.max_abs_diff["scores"] < 1e-4
    metadata = check_file(tmp_path / "spotter.onnx").metadata
    settings = json.loads(metadata["feature_settings"])
    assert settings["method"] == "dis" and settings["k"] is None and len(settings["regions"]) == 12
    assert json.loads(metadata["thresholds"]) == pytest.approx(dict(zip(("macro", "micro"), model.thresholds.tolist())))
    session = ort.InferenceSession(str(tmp_path / "spotter.onnx"), providers=["CPUExecutionProvider"])
    video = trained["data"].test_videos[0].value.features
    for length in (97, 613):
        features = video[None, :length]
        expected = model.eval()(torch.from_numpy(features)).detach().numpy()
        got = session.run(["scores"], {"features": features})[0]
        assert got.shape == (1, length, 6) and np.abs(got - expected).max() < 1e-4


def test_the_synthetic_default_runs_from_the_command_line(tmp_path):
    from common.cli import main

    cli = main(["--task", "spotting", "fit", "--trainer.max_epochs", "1", "--data.subjects", "[1,1,1]",
                "--data.seconds", "10", "--data.feature_cache", str(tmp_path / "cache"), "--run.wandb", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert cli.trainer.current_epoch == 1 and "val/f1" in cli.trainer.callback_metrics
    assert list((tmp_path / "runs" / "spotting").glob("*/version_0/metrics.csv"))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
