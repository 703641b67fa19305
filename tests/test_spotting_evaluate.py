"""MEGC spotting evaluation and STRS against hand-worked cases and an independent frame-set computation."""
import csv
import json

import numpy as np
import pytest

from spotting.evaluate import Spot, iou, main, megc2020_iou, megc_scores, strs_scores, summary_lines


def spots(video, label, *intervals):
    return [Spot(video, a, b, label) for a, b in intervals]


def test_precision_counts_every_prediction_as_the_official_script_does():
    # precision_small = N_find_labels / N_clips: a ground truth hit twice is found once out of two predictions
    micro = megc_scores(spots("v", "micro", (10, 20)), spots("v", "micro", (10, 20), (11, 20)))["micro"]
    assert (micro["hits"], micro["gt"], micro["pred"]) == (1, 1, 2)
    assert micro["precision"] == 0.5 and micro["recall"] == 1.0 and micro["f1"] == pytest.approx(2 / 3)
    # overlapping ground truths: the first prediction reaches both, precision still cannot pass 1
    micro = megc_scores(spots("v", "micro", (187, 200), (191, 201)), spots("v", "micro", (187, 200), (191, 208)))["micro"]
    assert (micro["hits"], micro["pred"], micro["precision"], micro["recall"]) == (2, 2, 1.0, 1.0)


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


def test_one_frame_intervals_never_hit_in_megc2020():
    assert iou((7, 7), (7, 7)) == 1.0 and iou((7, 7), (7, 8)) == 0.5  # the plain IoU (STRS, NMS)
    assert iou((9, 5), (5, 9)) == 0.0  # offset before onset
    # calc_iou: `clip[1] <= clip[0]` on either side scores 0
    assert megc2020_iou((86, 86), (85, 86)) == 0.0 and megc2020_iou((85, 86), (86, 86)) == 0.0
    assert megc2020_iou((85, 86), (85, 86)) == 1.0 and megc2020_iou((9, 5), (5, 9)) == 0.0
    scores = megc_scores([Spot("v0", 86, 86, "micro")], [Spot("v0", 85, 86, "micro")])
    assert scores["micro"]["hits"] == 0 and scores["micro"]["pred"] == 1
    scores = megc_scores([Spot("v0", 85, 86, "micro")], [Spot("v0", 86, 86, "micro"), Spot("v0", 85, 86, "micro")])
    assert scores["micro"]["hits"] == 1 and scores["micro"]["precision"] == 0.5


def test_videos_are_kept_apart():
    scores = megc_scores(spots("a", "micro", (10, 20)), spots("b", "micro", (10, 20)))
    assert scores["micro"]["hits"] == 0


def frame_set_counts(gt, pred):
    """Independent: IoU from Python sets of frames, one-frame intervals ruled out, counting spelled out."""
    def hit(g, p):
        if g[1] <= g[0] or p[1] <= p[0]:
            return False
        a, b = set(range(g[0], g[1] + 1)), set(range(p[0], p[1] + 1))
        return len(a & b) / len(a | b) >= 0.5
    return sum(any(hit(g, p) for p in pred) for g in gt), len(gt), len(pred)


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


def strs_spot(subject, video, onset, offset, emotion):
    return Spot(f"{subject}/{video}", onset, offset, emotion, subject)


def test_strs_hand_worked():
    gt = [strs_spot("s1", "v1", 10, 20, "happiness"), strs_spot("s1", "v1", 100, 120, "surprise")]
    pred = [strs_spot("s1", "v1", 10, 20, "happiness"),  # TP, right emotion
            strs_spot("s1", "v1", 11, 20, "happiness"),  # the same ground truth again: a false positive
            strs_spot("s1", "v1", 101, 120, "negative"),  # TP, wrong emotion
            strs_spot("s1", "v1", 300, 310, "surprise"),  # nothing there: FP
            strs_spot("s1", "v2", 10, 20, "happiness")]  # a video without ground truth: FP
    scores = strs_scores(gt, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 3, 0)
    assert scores["spot_f1"] == pytest.approx(2 * 0.4 * 1 / 1.4)
    # over the ground truth's emotions {happiness, surprise}: precision (1, 0), recall (1, 0) -> F1 1/2
    assert scores["analysis_precision"] == scores["analysis_recall"] == scores["analysis_f1"] == pytest.approx(0.5)
    assert scores["strs"] == pytest.approx(scores["spot_f1"] / 2)
    assert scores["official_scope"]["fp"] == 2, "the official scope skips the video without ground truth"


def test_strs_analysis_averages_over_the_ground_truth_emotions():
    gt = [strs_spot("s1", "v", 10, 20, "negative"), strs_spot("s1", "v", 40, 50, "positive"),
          strs_spot("s1", "v", 70, 80, "surprise")]
    pred = [strs_spot("s1", "v", 10, 20, "negative"), strs_spot("s1", "v", 40, 50, "positive")]
    scores = strs_scores(gt, pred)
    # the unspotted surprise counts with precision and recall 0: means 2/3
    assert scores["analysis_f1"] == pytest.approx(2 / 3)
    assert scores["per_emotion"]["surprise"] == {"precision": 0.0, "recall": 0.0}


def test_strs_official_scope_leaves_out_subjects_without_predictions_and_videos_without_ground_truth(capsys):
    gt = [strs_spot("s1", "v", 10, 20, "negative"), strs_spot("s2", "v", 10, 20, "positive"),
          strs_spot("s2", "w", 10, 20, "negative")]
    pred = [strs_spot("s1", "v", 10, 20, "negative"), strs_spot("s1", "x", 10, 20, "negative")]
    scores = strs_scores(gt, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 2)
    scope = scores["official_scope"]
    assert (scope["tp"], scope["fp"], scope["fn"]) == (1, 0, 0) and scope["spot_f1"] == 1.0
    # emotions still those of the whole ground truth: positive is never predicted
    assert scope["analysis_f1"] == pytest.approx(0.5) and scope["strs"] == pytest.approx(0.5)
    assert (scope["subjects_left_out"], scope["ground_truth_left_out"]) == (1, 2)
    assert (scope["videos_left_out"], scope["predictions_left_out"]) == (1, 1)
    assert scores["strs"] < scope["strs"]
    lines = summary_lines(scores)
    assert "1 subject(s) without predictions (2 ground truths)" in lines[-1] and "1 video(s)" in lines[-1]
    same = strs_scores(gt[:1], pred[:1])
    assert same["official_scope"]["strs"] == same["strs"] and len(summary_lines(same)) == 3


def test_strs_matches_one_to_one():
    gt = [strs_spot("s", "v", 10, 20, "happiness"), strs_spot("s", "v", 12, 22, "surprise")]
    pred = [strs_spot("s", "v", 12, 22, "surprise"), strs_spot("s", "v", 10, 21, "happiness")]
    scores = strs_scores(gt, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 0, 0) and scores["analysis_f1"] == 1.0
    # the official loop would let this one prediction take both ground truths
    one = strs_scores([strs_spot("s", "v", 10, 20, "a"), strs_spot("s", "v", 10, 21, "a")],
                      [strs_spot("s", "v", 10, 20, "a")])
    assert (one["tp"], one["fp"], one["fn"]) == (1, 0, 1)


def test_strs_defined_where_the_official_script_is_not():
    # one emotion, every true positive right: officially NaN (a 1x1 confusion matrix), here 1
    perfect = strs_scores([strs_spot("s", "v", 10, 20, "surprise")], [strs_spot("s", "v", 10, 20, "surprise")])
    assert perfect["analysis_f1"] == 1.0 and perfect["strs"] == 1.0
    # no true positive: officially a KeyError, here 0
    missed = strs_scores([strs_spot("s", "v", 10, 20, "surprise")], [strs_spot("s", "v", 50, 60, "surprise")])
    assert missed["tp"] == 0 and missed["analysis_f1"] == 0.0 and missed["strs"] == 0.0


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
