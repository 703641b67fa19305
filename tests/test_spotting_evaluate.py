"""MEGC spotting evaluation and STRS against hand-worked cases and an independent frame-set computation."""
import csv
import json

import numpy as np
import pytest

from spotting.evaluate import Spot, iou, main, megc_scores, strs_scores


def spots(video, label, *intervals):
    return [Spot(video, a, b, label) for a, b in intervals]


def test_one_ground_truth_hit_by_two_predictions_counts_once():
    scores = megc_scores(spots("v", "micro", (10, 20)), spots("v", "micro", (10, 20), (11, 20)))
    micro = scores["micro"]
    assert (micro["hits"], micro["gt"], micro["pred"], micro["submitted"]) == (1, 1, 1, 2)
    assert micro["precision"] == micro["recall"] == micro["f1"] == 1.0


def test_prediction_of_the_wrong_type_hits_nothing():
    scores = megc_scores(spots("v", "macro", (10, 20)), spots("v", "micro", (10, 20)))
    assert scores["macro"]["hits"] == 0 and scores["macro"]["gt"] == 1 and scores["macro"]["pred"] == 0
    assert scores["micro"]["pred"] == 1 and scores["micro"]["gt"] == 0
    assert scores["overall"] == {**scores["overall"], "hits": 0, "gt": 1, "pred": 1, "f1": 0.0}


def test_iou_exactly_one_half_with_inclusive_frames_is_a_hit():
    # 5 shared frames of 10: 0.5 inclusive; (5 - 1) / (10 - 1) with exclusive ends would miss
    assert iou((1, 10), (1, 5)) == 0.5
    assert megc_scores(spots("v", "macro", (1, 10)), spots("v", "macro", (1, 5)))["macro"]["hits"] == 1
    assert megc_scores(spots("v", "macro", (1, 10)), spots("v", "macro", (1, 4)))["macro"]["hits"] == 0


def test_one_frame_intervals():
    assert iou((7, 7), (7, 7)) == 1.0
    assert iou((7, 7), (7, 8)) == 0.5 and iou((7, 7), (6, 8)) == pytest.approx(1 / 3)
    assert iou((7, 7), (8, 8)) == 0.0
    assert iou((9, 5), (5, 9)) == 0.0  # offset before onset never hits
    scores = megc_scores(spots("v", "micro", (7, 7)), spots("v", "micro", (7, 8), (6, 8)))
    assert scores["micro"]["hits"] == 1 and scores["micro"]["pred"] == 2


def test_videos_are_kept_apart():
    scores = megc_scores(spots("a", "micro", (10, 20)), spots("b", "micro", (10, 20)))
    assert scores["micro"]["hits"] == 0


def frame_set_counts(gt, pred):
    """Independent: IoU from Python sets of frames; MEGC2020 counting spelled out pair by pair."""
    hits = pairs = 0
    for g in gt:
        g_frames = set(range(g[0], g[1] + 1))
        n = sum(len(g_frames & set(range(p[0], p[1] + 1))) / len(g_frames | set(range(p[0], p[1] + 1))) >= 0.5
                for p in pred)
        hits += n > 0
        pairs += n
    return hits, len(gt), len(pred) - (pairs - hits)


def test_matches_an_independent_computation_on_random_intervals():
    rng = np.random.default_rng(0)
    truth, guesses, expected = [], [], {"macro": np.zeros(3, int), "micro": np.zeros(3, int)}
    for v in range(30):
        for kind in ("macro", "micro"):
            gt = [(int(a), int(a + rng.integers(0, 30))) for a in rng.integers(0, 300, rng.integers(0, 5))]
            pred = [(int(a), int(a + rng.integers(0, 30))) for a in rng.integers(0, 300, rng.integers(0, 8))]
            pred += [(a + int(rng.integers(-3, 4)), b + int(rng.integers(-3, 4))) for a, b in gt if rng.random() < 0.7]
            truth += spots(str(v), kind, *gt)
            guesses += spots(str(v), kind, *pred)
            expected[kind] += frame_set_counts(gt, pred)
    scores = megc_scores(truth, guesses)
    for kind in ("macro", "micro"):
        assert [scores[kind][k] for k in ("hits", "gt", "pred")] == expected[kind].tolist()
        hits, gt, pred = expected[kind]
        assert scores[kind]["precision"] == pytest.approx(hits / pred)
        assert scores[kind]["recall"] == pytest.approx(hits / gt)
    total = expected["macro"] + expected["micro"]
    assert scores["overall"]["hits"] == total[0] and scores["overall"]["pred"] == total[2]
    assert 0 < scores["overall"]["f1"] < 1


def test_strs_hand_worked():
    gt = [Spot("s1/v1", 10, 20, "happiness"), Spot("s1/v1", 100, 120, "surprise")]
    pred = [Spot("s1/v1", 10, 20, "happiness"),  # TP, right emotion
            Spot("s1/v1", 11, 20, "happiness"),  # the same ground truth again: a false positive
            Spot("s1/v1", 101, 120, "negative"),  # TP, wrong emotion
            Spot("s1/v1", 300, 310, "surprise"),  # nothing there: FP
            Spot("s1/v2", 10, 20, "happiness")]  # another video: FP
    scores = strs_scores(gt, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 3, 0)
    assert scores["spot_f1"] == pytest.approx(2 * 0.4 * 1 / 1.4)
    # emotions {happiness, negative, surprise}: precision (1, 0, 0), recall (1, 0, 0) -> means 1/3, F1 1/3
    assert scores["analysis_precision"] == pytest.approx(1 / 3) and scores["analysis_recall"] == pytest.approx(1 / 3)
    assert scores["analysis_f1"] == pytest.approx(1 / 3)
    assert scores["strs"] == pytest.approx(scores["spot_f1"] / 3)


def test_strs_takes_the_best_unmatched_ground_truth():
    gt = [Spot("v", 10, 20, "happiness"), Spot("v", 12, 22, "surprise")]
    pred = [Spot("v", 12, 22, "surprise"), Spot("v", 10, 21, "happiness")]
    scores = strs_scores(gt, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 0, 0) and scores["analysis_f1"] == 1.0


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_command_line_json_and_bad_rows(tmp_path, capsys):
    gt = write_csv(tmp_path / "gt.csv", ["vid", "onset", "offset", "type"], [["a", 1, 10, "mae"], ["a", 50, 55, "me"]])
    pred = write_csv(tmp_path / "pred.csv", ["vid", "onset", "offset", "type", "score"],
                     [["a", 1, 9, "mae", 0.9], ["a", 80, 85, "me", 0.5]])
    assert main(["--gt", str(gt), "--pred", str(pred), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"macro", "micro", "overall"}
    assert set(scores["macro"]) >= {"precision", "recall", "f1", "hits", "gt", "pred"}
    assert scores["macro"]["f1"] == 1.0 and scores["micro"]["f1"] == 0.0 and scores["overall"]["f1"] == 0.5
    bad = write_csv(tmp_path / "bad.csv", ["vid", "onset", "offset", "type"], [["a", 1, 9, "mae"], ["a", 5, 9, "blink"]])
    assert main(["--gt", str(gt), "--pred", str(bad)]) == 2
    message = capsys.readouterr().err
    assert "bad.csv, line 3" in message and "blink" in message


def test_command_line_strs(tmp_path, capsys):
    columns = ["subject", "video", "onset", "offset", "emotion"]
    gt = write_csv(tmp_path / "gt.csv", columns, [["s1", "v1", 10, 20, "happiness"]])
    pred = write_csv(tmp_path / "pred.csv", columns, [["s1", "v1", 10, 20, "happiness"], ["s1", "v1", 40, 50, "surprise"]])
    assert main(["--strs", "--gt", str(gt), "--pred", str(pred), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {"spot_f1", "analysis_f1", "strs", "tp", "fp", "fn"} <= set(scores)
    assert (scores["tp"], scores["fp"]) == (1, 1) and scores["strs"] == pytest.approx(2 / 3)
