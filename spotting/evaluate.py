"""Spotting evaluation by the MEGC rules, and the command that applies them to submission files.

    python -m spotting.evaluate --gt GT.csv --pred PRED.csv [--json]
    python -m spotting.evaluate --gt-dataset samm_lv --gt-root DIR --pred PRED.csv [--json]
    python -m spotting.evaluate --strs --gt GT.csv --pred PRED.csv [--json]

MEGC2020 (the default) follows the baseline's `result_helper.py` (`calc_iou`, `pred_clips_analysis`, the
`F1_small` it reports). Files are submission CSVs `vid,onset,offset,type` with type `me` (micro) or `mae` (macro);
several --gt or --pred files are concatenated (the folds of a LOSO run). Per type, summed over all videos:
- IoU over inclusive frame numbers, |A ∩ B| / |A ∪ B| with |[a, b]| = b - a + 1; it is 0 when either interval's
  offset is not after its onset (`calc_iou`'s `clip[1] <= clip[0]`): a one-frame interval never hits, on either
  side. (`calc_iou` gives disjoint intervals a one-frame overlap; with both lengths >= 2 that never reaches 0.5,
  so they score 0 here.)
- a ground truth is hit (found) when some prediction of its type reaches IoU >= 0.5;
- precision = ground truths found / all predictions (`precision_small = N_find_labels / N_clips`): a second
  prediction on a ground truth already found lowers precision; recall = found / ground truths; F1 their harmonic
  mean. `pred` in the output is every prediction. `macro` and `micro` are the two types, `overall` adds their
  counts.

MEGC2024 STRS (`--strs`) follows `strs_metric.py` (genbing99/STRS-Metric) except where noted. Files are
`subject,video,onset,offset,emotion`; IoU over inclusive frame sets, no one-frame rule.
- Spotting: within a video each prediction, in file order, takes the unmatched ground truth with the highest
  IoU >= 0.5, or is a false positive; unmatched ground truths are false negatives. Here a prediction takes one
  ground truth; the official loop lets it take every unmatched one it reaches (ground truths [10,20] and [10,21]
  with one prediction [10,20]: here TP 1, FN 1; officially both TPs).
- Analysis on the spotted true positives, over the emotions of the ground truth (all of it): per emotion,
  precision = correct / predicted as it and recall = correct / truly it (0 where nothing is), averaged over those
  emotions; analysis F1 is the harmonic mean of the two means; STRS = spotting F1 x analysis F1.
- Where the official script has no value, this one has the defined one: when every true positive is one emotion
  predicted right, officially NaN (sklearn's 1x1 confusion matrix scores it 0 everywhere), here precision and
  recall 1 for it (so 1.0 when the ground truth has that emotion only); with no true positive, officially a
  KeyError, here analysis F1 and STRS 0.
- Scope: `strs`, `spot_f1`, `analysis_f1` count everything: ground truths of subjects without predictions are
  false negatives and predictions on videos without ground truth false positives. The official script scores
  only subjects that have predictions and, in them, videos that have ground truth, which flatters a model that
  skips subjects; `official_scope` holds {strs, spot_f1, analysis_f1, tp, fp, fn} on that scope.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

IOU_THRESHOLD = 0.5
TYPES = ("macro", "micro")
TYPE_CODES = {"mae": "macro", "me": "micro"}
CODE_OF = {kind: code for code, kind in TYPE_CODES.items()}
SUBMISSION_COLUMNS = ("vid", "onset", "offset", "type")
STRS_COLUMNS = ("subject", "video", "onset", "offset", "emotion")


@dataclass(frozen=True)
class Spot:
    """An interval of one video, inclusive frame numbers; `label` is the type (MEGC2020) or the emotion (STRS).
    STRS files also name the subject (`video` is then `subject/video`)."""

    video: str
    onset: int
    offset: int
    label: str
    subject: str = ""


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of inclusive frame intervals (onset, offset)."""
    start, end = max(a[0], b[0]), min(a[1], b[1])
    if start > end or a[1] < a[0] or b[1] < b[0]:
        return 0.0
    return (end - start + 1) / (max(a[1], b[1]) - min(a[0], b[0]) + 1)


def megc2020_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """`calc_iou` of the MEGC2020 baseline: 0 when either offset is not after its onset (one-frame intervals)."""
    if a[1] <= a[0] or b[1] <= b[0]:
        return 0.0
    return iou(a, b)


# ---------------------------------------------------------------- MEGC2020


@dataclass
class Counts:
    hits: int = 0  # ground truths found
    gt: int = 0
    pred: int = 0  # every prediction

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.hits + other.hits, self.gt + other.gt, self.pred + other.pred)

    def as_dict(self) -> dict:
        precision = self.hits / self.pred if self.pred else 0.0
        recall = self.hits / self.gt if self.gt else 0.0
        return {"precision": precision, "recall": recall, "f1": _harmonic(precision, recall), "hits": self.hits,
                "gt": self.gt, "pred": self.pred}


def video_counts(gt: Sequence[tuple[int, int]], pred: Sequence[tuple[int, int]]) -> Counts:
    """One video, one type: the official counting."""
    hits = sum(any(megc2020_iou(p, g) >= IOU_THRESHOLD for p in pred) for g in gt)
    return Counts(hits, len(gt), len(pred))


def megc_scores(gt: Iterable[Spot], pred: Iterable[Spot]) -> dict:
    """{"macro": {...}, "micro": {...}, "overall": {...}} with precision, recall, f1, hits, gt, pred."""
    grouped: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for which, spots in ((0, gt), (1, pred)):
        for spot in spots:
            grouped[(spot.video, spot.label)][which].append((spot.onset, spot.offset))
    totals = {kind: Counts() for kind in TYPES}
    for (_, kind), (truth, guess) in grouped.items():
        totals[kind] = totals[kind] + video_counts(truth, guess)
    scores = {kind: totals[kind].as_dict() for kind in TYPES}
    scores["overall"] = (totals["macro"] + totals["micro"]).as_dict()
    return scores


# ---------------------------------------------------------------- MEGC2024 STRS


def strs_scores(gt: Sequence[Spot], pred: Sequence[Spot]) -> dict:
    """STRS over every ground truth and prediction, with `official_scope` beside (see the module docstring)."""
    emotions = sorted({spot.label for spot in gt})
    scores = _strs(gt, pred, emotions)
    subjects, videos = {spot.subject for spot in pred}, {spot.video for spot in gt}
    scoped_gt = [spot for spot in gt if spot.subject in subjects]
    scoped_pred = [spot for spot in pred if spot.video in videos]
    official = _strs(scoped_gt, scoped_pred, emotions)
    scores["official_scope"] = {key: official[key] for key in ("strs", "spot_f1", "analysis_f1", "tp", "fp", "fn")}
    scores["official_scope"].update(
        subjects_left_out=len({spot.subject for spot in gt} - subjects), ground_truth_left_out=len(gt) - len(scoped_gt),
        videos_left_out=len({spot.video for spot in pred} - videos), predictions_left_out=len(pred) - len(scoped_pred))
    return scores


def _strs(gt: Sequence[Spot], pred: Sequence[Spot], emotions: Sequence[str]) -> dict:
    pairs = true_positive_pairs(gt, pred)
    tp = len(pairs)
    fp, fn = len(pred) - tp, len(gt) - tp
    spot_precision = tp / (tp + fp) if tp + fp else 0.0
    spot_recall = tp / (tp + fn) if tp + fn else 0.0
    spot_f1 = _harmonic(spot_precision, spot_recall)
    analysis = analysis_scores(pairs, emotions)
    return {"spot_f1": spot_f1, "spot_precision": spot_precision, "spot_recall": spot_recall, "tp": tp, "fp": fp,
            "fn": fn, **analysis, "strs": spot_f1 * analysis["analysis_f1"]}


def true_positive_pairs(gt: Sequence[Spot], pred: Sequence[Spot]) -> list[tuple[str, str]]:
    """(true emotion, predicted emotion) of each prediction that takes a ground truth, one to one, per video."""
    truth: dict[str, list[Spot]] = defaultdict(list)
    for spot in gt:
        truth[spot.video].append(spot)
    matched: set[int] = set()
    pairs = []
    for spot in pred:
        candidates = [(iou((g.onset, g.offset), (spot.onset, spot.offset)), i)
                      for i, g in enumerate(truth.get(spot.video, ())) if (spot.video, i) not in matched]
        best = max(candidates, key=lambda c: (c[0], -c[1]), default=None)  # the first of equals
        if best is not None and best[0] >= IOU_THRESHOLD:
            matched.add((spot.video, best[1]))
            pairs.append((truth[spot.video][best[1]].label, spot.label))
    return pairs


def analysis_scores(pairs: Sequence[tuple[str, str]], emotions: Sequence[str] | None = None) -> dict:
    """Mean per-emotion precision and recall over `emotions` (default: those of the pairs' ground truths)."""
    emotions = sorted({t for t, _ in pairs}) if emotions is None else list(emotions)
    predicted, true = Counter(p for _, p in pairs), Counter(t for t, _ in pairs)
    correct = Counter(t for t, p in pairs if t == p)
    precision = [correct[e] / predicted[e] if predicted[e] else 0.0 for e in emotions]
    recall = [correct[e] / true[e] if true[e] else 0.0 for e in emotions]
    mean_p = sum(precision) / len(emotions) if emotions else 0.0
    mean_r = sum(recall) / len(emotions) if emotions else 0.0
    return {"analysis_precision": mean_p, "analysis_recall": mean_r, "analysis_f1": _harmonic(mean_p, mean_r),
            "per_emotion": {e: {"precision": p, "recall": r} for e, p, r in zip(emotions, precision, recall)}}


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


# ---------------------------------------------------------------- files


class SubmissionError(ValueError):
    pass


def read_spots(path: Path | str, strs: bool = False) -> list[Spot]:
    """A submission or ground-truth CSV; every bad row is an error naming the file and line."""
    path = Path(path)
    columns = STRS_COLUMNS if strs else SUBMISSION_COLUMNS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        found = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in columns if c not in found]
        if missing:
            raise SubmissionError(f"{path}: missing columns {missing} (expected {','.join(columns)}; found "
                                  f"{','.join(found) or 'nothing'})")
        spots = []
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            line = reader.line_num
            onset, offset = (_frame(row[c], path, line, c) for c in ("onset", "offset"))
            if strs:
                spots.append(Spot(f"{row['subject']}/{row['video']}", onset, offset, row["emotion"].lower(),
                                  row["subject"]))
            else:
                spots.append(Spot(row["vid"], onset, offset, _type(row["type"], path, line)))
    return spots


def _frame(text: str, path: Path, line: int, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise SubmissionError(f"{path}, line {line}: {column} {text!r} is not a frame number") from None
    if value != int(value):
        raise SubmissionError(f"{path}, line {line}: {column} {text!r} is not a whole frame number")
    return int(value)


def _type(text: str, path: Path, line: int) -> str:
    kind = TYPE_CODES.get(text.lower(), text.lower() if text.lower() in TYPES else None)
    if kind is None:
        raise SubmissionError(f"{path}, line {line}: type {text!r} is not me or mae")
    return kind


def write_submission(path: Path | str, spots: Iterable[Spot], extra: Sequence[Mapping] | None = None,
                     extra_columns: Sequence[str] = ()) -> Path:
    """`vid,onset,offset,type` (type me/mae), then `extra_columns` with each spot's values from `extra`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spots = list(spots)
    extra = list(extra) if extra is not None else [{}] * len(spots)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*SUBMISSION_COLUMNS, *extra_columns])
        for spot, more in zip(spots, extra):
            writer.writerow([spot.video, spot.onset, spot.offset, CODE_OF[spot.label],
                             *(more.get(c, "") for c in extra_columns)])
    return path


def dataset_ground_truth(dataset: str, root: Path | str) -> list[Spot]:
    """The annotated intervals of a spotting dataset as distributed (parsed by spotting/parsers.py)."""
    from common.data import load_samples
    from spotting.parsers import video_events

    return [Spot(sample.extra["vid"], e["interval"].onset, e["interval"].offset, e["type"])
            for sample in load_samples(dataset, root, task="spotting") for e in video_events(sample)]


def pool_folds(test_dirs: Sequence[Path], out: Path) -> tuple[dict, list[str]]:
    """Join the folds' submission files into `out` and score them together (counts summed over every video of
    every fold); writes scores.json {"learned": ..., "baseline": ...}; returns it and the summary lines. The
    spotting task's way of scoring LOSO folds (common.tasks)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, lines = {}, []
    truth = _join([Path(d) / "ground_truth.csv" for d in test_dirs], out / "ground_truth.csv")
    for name, key in (("predictions.csv", "learned"), ("baseline_predictions.csv", "baseline")):
        files = [Path(d) / name for d in test_dirs]
        if all(f.is_file() for f in files):
            results[key] = megc_scores(truth, _join(files, out / name))
            lines += [f"{key}:"] + ["  " + line for line in summary_lines(results[key])]
    (out / "scores.json").write_text(json.dumps(results, indent=2))
    return results, lines


def _join(files: Sequence[Path], target: Path) -> list[Spot]:
    """Concatenate CSVs with one header; the spots they hold."""
    rows, header = [], None
    for path in files:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, header)
            rows += [r for r in reader if r]
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or SUBMISSION_COLUMNS)
        writer.writerows(rows)
    return read_spots(target)


def summary_lines(scores: Mapping) -> list[str]:
    if "strs" in scores:
        return [f"spotting: F1 {scores['spot_f1']:.4f} (TP {scores['tp']}, FP {scores['fp']}, FN {scores['fn']})",
                f"analysis: F1 {scores['analysis_f1']:.4f} (precision {scores['analysis_precision']:.4f}, "
                f"recall {scores['analysis_recall']:.4f})", f"STRS {scores['strs']:.4f}",
                *official_scope_lines(scores.get("official_scope"))]
    return [f"{kind:8s} F1 {s['f1']:.4f}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  "
            f"(hits {s['hits']}, ground truth {s['gt']}, predictions {s['pred']})" for kind, s in scores.items()]


def official_scope_lines(scope: Mapping | None) -> list[str]:
    """A line on what the official script's scope would leave out, when it leaves out anything."""
    if not scope or not any(scope[k] for k in ("ground_truth_left_out", "predictions_left_out")):
        return []
    return [f"official scope (subjects with predictions, videos with ground truth) leaves out "
            f"{scope['subjects_left_out']} subject(s) without predictions ({scope['ground_truth_left_out']} ground "
            f"truths) and {scope['videos_left_out']} video(s) without ground truth ({scope['predictions_left_out']} "
            f"predictions): STRS {scope['strs']:.4f}, spotting F1 {scope['spot_f1']:.4f}, analysis F1 "
            f"{scope['analysis_f1']:.4f} (TP {scope['tp']}, FP {scope['fp']}, FN {scope['fn']})"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotting.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--gt", nargs="+", help="ground-truth CSV(s) in the prediction format")
    parser.add_argument("--gt-dataset", help="or a spotting dataset as distributed: casme_sq, samm_lv, casme3_lv")
    parser.add_argument("--gt-root", help="the folder of --gt-dataset")
    parser.add_argument("--pred", nargs="+", required=True, help="submission CSV(s)")
    parser.add_argument("--strs", action="store_true", help="MEGC2024 STRS: subject,video,onset,offset,emotion")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if (args.gt is None) == (args.gt_dataset is None):
        parser.error("give either --gt or --gt-dataset (with --gt-root)")
    if args.gt_dataset and (not args.gt_root or args.strs):
        parser.error("--gt-dataset needs --gt-root, and scores MEGC2020 submissions (not --strs)")
    try:
        truth = (dataset_ground_truth(args.gt_dataset, args.gt_root) if args.gt_dataset
                 else [s for path in args.gt for s in read_spots(path, args.strs)])
        guesses = [s for path in args.pred for s in read_spots(path, args.strs)]
    except (ValueError, KeyError, OSError) as error:
        from common.errors import concise

        print(f"evaluate: {concise(error)}", file=sys.stderr)
        return 2
    scores = strs_scores(truth, guesses) if args.strs else megc_scores(truth, guesses)
    print(json.dumps(scores, indent=2) if args.json else "\n".join(summary_lines(scores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
