"""The AU module: the masked weighted asymmetric loss, edge targets, per-AU F1 and ICC against independent
computations, OpenFace-style predictions, and an export with both heads."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from au.evaluate import f1_counts, f1_scores, icc_3_1
from au.evaluate import main as evaluate_main
from au.module import AUModule, au_loss_weights, relation_targets, weighted_asymmetric_loss
from common.cli import main as train_main
from common.export import export_checkpoint
from tests.conftest import exported_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["--model.backbone", "resnet18", "--data.image_size", "64", "--model.crop_size", "56",
        "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--run.wandb", "false"]


def test_weighted_asymmetric_loss_against_a_hand_computation():
    p = torch.tensor([[0.9, 0.2, 0.6]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    w = torch.tensor([1.0, 2.0, 0.5])
    by_hand = -(1.0 * np.log(0.9) + 2.0 * 0.2 * np.log(0.8) + 0.5 * 0.6 * np.log(0.4)) / 3
    assert weighted_asymmetric_loss(p, y, torch.ones(1, 3, dtype=torch.bool), w).item() == pytest.approx(by_hand, rel=1e-5)


def test_unannotated_aus_give_no_gradient():
    p = torch.tensor([[0.3, 0.7, 0.5]], requires_grad=True)
    mask = torch.tensor([[True, False, True]])
    weighted_asymmetric_loss(p, torch.tensor([[1.0, 1.0, 0.0]]), mask).backward()
    assert p.grad[0, 1] == 0 and p.grad[0, 0] != 0 and p.grad[0, 2] != 0


def test_edge_states_and_their_mask():
    target = torch.tensor([[1.0, 0.0, 1.0]])
    states = relation_targets(target, torch.tensor([[True, True, False]]))
    assert states.view(3, 3)[0, 1] == 2 * 1 + 0 and states.view(3, 3)[1, 0] == 2 * 0 + 1
    assert states.view(3, 3)[0, 0] == 3 and torch.all(states.view(3, 3)[2] == -100) and states.view(3, 3)[0, 2] == -100


def test_loss_weights_follow_the_official_formula():
    weights = au_loss_weights(np.array([0.5, 0.25, 0.1]))
    expected = np.array([2, 4, 10]) / 16 * 3
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)


def test_f1_per_au_against_an_independent_count():
    rng = np.random.default_rng(0)
    pred, true, mask = rng.random((50, 4)) > 0.5, rng.random((50, 4)) > 0.6, rng.random((50, 4)) > 0.2
    f1 = f1_scores(*f1_counts(pred, true, mask))
    for k in range(4):
        known = mask[:, k]
        tp = sum(pred[i, k] and true[i, k] for i in range(50) if known[i])
        fp = sum(pred[i, k] and not true[i, k] for i in range(50) if known[i])
        fn = sum(not pred[i, k] and true[i, k] for i in range(50) if known[i])
        assert f1[k] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_icc_3_1_of_known_cases():
    truth = np.array([0, 1, 2, 3, 4, 5], float)
    assert icc_3_1(truth, truth) == pytest.approx(1.0)
    assert icc_3_1(truth + 1.5, truth) == pytest.approx(1.0), "consistency ignores a constant offset"
    # Shrout & Fleiss's formula by hand for a small table
    a, b = np.array([1.0, 2.0, 4.0, 3.0]), np.array([2.0, 2.0, 5.0, 2.0])
    ratings = np.stack([a, b], 1)
    grand = ratings.mean()
    ms_r = 2 * ((ratings.mean(1) - grand) ** 2).sum() / 3
    ss_e = ((ratings - ratings.mean(1, keepdims=True) - ratings.mean(0) + grand) ** 2).sum()
    ms_e = ss_e / 3
    assert icc_3_1(a, b) == pytest.approx((ms_r - ms_e) / (ms_r + ms_e))


def write_predictions(path, dataset, aus, rows, intensity=None):
    """A predictions.csv as AUModule writes it: rows of (predicted, true) per AU; intensity (raw, label) pairs."""
    names = [f"AU{au:02d}" for au in aus]
    header = ["dataset", "subject", "sample"] + [f"{n}_{f}" for n in names
                                                 for f in ("c", "r", "r_raw", "p", "label", "mask", "r_label", "r_mask")]
    lines = [",".join(header)]
    for i, values in enumerate(rows):
        cells = [dataset, "s1", f"f{i}"]
        for k, (pred, true) in enumerate(values):
            raw, label = intensity[i][k] if intensity else (0.0, 0.0)
            cells += [str(pred), str(raw * pred), str(raw), str(0.9 if pred else 0.1), str(true), "1", str(label),
                      "1" if intensity else "0"]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_standard_au_mean_reaches_the_report_and_the_line(tmp_path, capsys):
    aus = [1, 2, 5]  # BP4D's standard 12 have AU1 and AU2, not AU5
    rows = [[(1, 1), (0, 1), (1, 1)], [(1, 0), (1, 1), (1, 1)], [(0, 0), (1, 1), (1, 1)]]
    path = write_predictions(tmp_path / "bp4d.csv", "bp4d", aus, rows)
    assert evaluate_main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    f1 = {"AU01": 2 / 3, "AU02": 0.8, "AU05": 1.0}
    assert report["mean_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert report["mean_f1_standard"] == pytest.approx((f1["AU01"] + f1["AU02"]) / 2)
    assert report["by_dataset"]["bp4d"]["mean_f1_standard"] == report["mean_f1_standard"]
    assert evaluate_main([str(path)]) == 0
    assert f"standard AUs {report['mean_f1_standard']:.4f}" in capsys.readouterr().out


def test_an_undefined_icc_is_reported_as_undefined_without_a_warning(tmp_path, capsys):
    import warnings

    constant = [[(2.0, 3.0)], [(2.0, 3.0)], [(2.0, 3.0)]]  # no variance: ICC(3,1) has nothing to explain
    path = write_predictions(tmp_path / "p.csv", "disfa", [1], [[(1, 1)]] * 3, intensity=constant)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_main([str(path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["mean_icc"] is None and report["folds"][0]["intensity"]["AU01"]["icc"] is None
        assert report["mean_mae"] == pytest.approx(1.0)
        assert evaluate_main([str(path)]) == 0
    assert "ICC(3,1) undefined, MAE 1.0000" in capsys.readouterr().out


def test_forward_and_predict_gate_the_intensity_as_the_export_does():
    module = AUModule([f"AU{a:02d}" for a in (1, 2, 4)], image_size=64, crop_size=56, backbone="resnet18", stage=1).eval()
    faces = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        module.threshold = float(module(faces)["au_prob"].median())  # some AUs on each side of it
        out = module(faces)
    assert set(out) >= {"au_prob", "au_intensity", "au_intensity_raw"}
    absent = out["au_prob"] < module.threshold
    assert absent.any() and (~absent).any()
    assert torch.all(out["au_intensity"][absent] == 0)
    assert torch.equal(out["au_intensity"][~absent], out["au_intensity_raw"][~absent])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("au_runs")
    train_main(["--task", "au", "fit", *TINY, "--model.stage", "1", "--data.subjects", "[3, 1, 1]",
                "--data.per_subject", "4", "--trainer.max_epochs", "1", "--run.root", str(root)])
    run = next(root.glob("au/*/version_0"))
    train_main(["--task", "au", "test", "--config", str(run / "config.yaml"), "--ckpt_path",
                str(run / "checkpoints" / "last.ckpt")])
    return run, run / "test"


def test_predictions_use_openface_names_and_keep_intensity_consistent(trained):
    _, test_run = trained
    rows = list(csv.DictReader(open(test_run / "predictions.csv")))
    assert len(rows) == 4
    for column in ("AU01_c", "AU01_r", "AU01_p", "AU01_label", "AU01_mask", "AU27_r_label", "AU27_r_mask"):
        assert column in rows[0]
    for row in rows:
        for au in ("AU01", "AU12", "AU25"):
            assert int(row[f"{au}_c"]) == int(float(row[f"{au}_p"]) >= 0.5)
            if row[f"{au}_c"] == "0":
                assert float(row[f"{au}_r"]) == 0.0


def test_evaluate_scores_the_folds(trained, capsys):
    _, test_run = trained
    assert evaluate_main([str(test_run / "predictions.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(open(test_run / "predictions.csv")))
    names = [c[:-2] for c in rows[0] if c.endswith("_c")]
    pred = np.array([[int(r[f"{n}_c"]) for n in names] for r in rows])
    true = np.array([[int(r[f"{n}_label"]) for n in names] for r in rows])
    expected = f1_scores(*f1_counts(pred, true, np.ones_like(pred)))
    assert report["mean_f1"] == pytest.approx(expected.mean())
    assert {"mean_icc", "mean_mae", "by_dataset", "folds"} <= set(report)


def test_export_has_both_heads_and_the_au_names(trained, tmp_path):
    run, _ = trained
    out = tmp_path / "au.onnx"
    report = export_checkpoint(run / "checkpoints" / "last.ckpt", out)
    assert report.max_abs_diff["au_prob"] <= 1e-4 and report.max_abs_diff["au_intensity"] <= 1e-4
    assert any(line.startswith("before the activation") for line in report.lines())
    import onnx

    declared = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
                for o in onnx.load(str(out)).graph.output}
    assert declared == {"au_prob": ["N", 17], "au_intensity": ["N", 17]}, "K is fixed and N named as the contract names it"
    metadata = exported_metadata(out, "au")
    assert json.loads(metadata["aus"])[:3] == ["AU01", "AU02", "AU04"] and len(json.loads(metadata["aus"])) == 17
    assert json.loads(metadata["input_size"]) == [256, 256] and json.loads(metadata["model_input_size"]) == [64, 64]
    assert "au_prob < 0.5" in metadata["output_activation"]
    import onnxruntime as ort

    image = torch.rand(2, 3, 256, 256).numpy()
    prob, intensity = ort.InferenceSession(str(out)).run(["au_prob", "au_intensity"], {"image": image})
    assert prob.shape == intensity.shape == (2, 17) and np.all(intensity[prob < 0.5] == 0)


def test_stage_two_starts_from_a_stage_one_checkpoint(trained, tmp_path):
    run, _ = trained
    stage1 = AUModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    module = AUModule(stage1.class_names, image_size=64, crop_size=56, backbone="resnet18", stage=2,
                      init_from=str(run / "checkpoints" / "last.ckpt"))
    module.load_initial_weights()
    shared = ("net.backbone.conv1.weight", "net.global_linear.fc.weight", "net.head.class_linears.3.fc.weight",
              "net.head.sc")
    ours, theirs = module.state_dict(), stage1.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in shared)
