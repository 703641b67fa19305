"""Spotting evaluation by the MEGC rules, and the command that applies them to submission files.

    python -m spotting.evaluate --gt GT.csv --pred PRED.csv [--json]
    python -m spotting.evaluate --gt-dataset samm_lv --gt-root DIR --pred PRED.csv [--json]
    python -m spotting.evaluate --strs --gt GT.csv --pred PRED.csv [--json]

MEGC2020 (the default). Files are submission CSVs `vid,onset,offset,type` with type `me` (micro) or `mae` (macro);
several --gt or --pred files are concatenated (the folds of a LOSO run). IoU is taken over inclusive frame numbers:
|A ∩ B| / |A ∪ B| with |[a, b]| = b - a + 1, and 0 where the intervals do not overlap (so an interval whose offset
precedes its onset never hits). A ground-truth interval is hit when a prediction of its type reaches IoU >= 0.5.
Per type, summed over all videos: hits = ground truths hit; a prediction that hits a ground truth another
prediction already hit is not counted again (the official baseline's rule: counted predictions = predictions -
(hit pairs - hits)); precision = hits / counted predictions, recall = hits / ground truths, F1 their harmonic mean.
`macro` and `micro` are the two types, `overall` adds their counts.

MEGC2024 STRS (`--strs`). Files are `subject,video,onset,offset,emotion`. Within a video each prediction, in file
order, takes the unmatched ground truth with the highest IoU >= 0.5 (each ground truth is matched at most once;
a later prediction on a matched one is a false positive). Spotting F1 from those TP/FP/FN. Analysis looks at the
true positives only: for each emotion (those of their ground truths and predictions), precision = correct /
predicted as it, recall = correct / truly it (0 where nothing is predicted or true); analysis F1 is the harmonic
mean of the mean precision and the mean recall; STRS = spotting F1 x analysis F1.
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
    """An interval of one video, inclusive frame numbers; `label` is the type (MEGC2020) or the emotion (STRS)."""

    video: str
    onset: int
    offset: int
    label: str


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of inclusive frame intervals (onset, offset)."""
    start, end = max(a[0], b[0]), min(a[1], b[1])
    if start > end or a[1] < a[0] or b[1] < b[0]:
        return 0.0
    return (end - start + 1) / (max(a[1], b[1]) - min(a[0], b[0]) + 1)


# ---------------------------------------------------------------- MEGC2020


@dataclass
class Counts:
    hits: int = 0  # ground truths hit
    gt: int = 0
    pred: int = 0  # predictions counted (repeat hits on one ground truth count once)
    submitted: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.hits + other.hits, self.gt + other.gt, self.pred + other.pred,
                      self.submitted + other.submitted)

    def as_dict(self) -> dict:
        precision = self.hits / self.pred if self.pred else 0.0
        recall = self.hits / self.gt if self.gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "hits": self.hits, "gt": self.gt,
                "pred": self.pred, "submitted": self.submitted}


def video_counts(gt: Sequence[tuple[int, int]], pred: Sequence[tuple[int, int]]) -> Counts:
    """One video, one type: the official counting."""
    hits_per_gt = [sum(iou(p, g) >= IOU_THRESHOLD for p in pred) for g in gt]
    hits = sum(h > 0 for h in hits_per_gt)
    return Counts(hits, len(gt), len(pred) - (sum(hits_per_gt) - hits), len(pred))


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
    truth: dict[str, list[Spot]] = defaultdict(list)
    for spot in gt:
        truth[spot.video].append(spot)
    matched: set[int] = set()
    pairs: list[tuple[str, str]] = []  # (true emotion, predicted emotion) of each true positive
    fp = 0
    for spot in pred:
        candidates = [(iou((g.onset, g.offset), (spot.onset, spot.offset)), id(g), g) for g in truth.get(spot.video, ())
                      if id(g) not in matched]
        best = max(candidates, key=lambda c: c[0], default=None)
        if best is None or best[0] < IOU_THRESHOLD:
            fp += 1
            continue
        matched.add(best[1])
        pairs.append((best[2].label, spot.label))
    tp, fn = len(pairs), len(gt) - len(pairs)
    spot_precision = tp / (tp + fp) if tp + fp else 0.0
    spot_recall = tp / (tp + fn) if tp + fn else 0.0
    spot_f1 = _harmonic(spot_precision, spot_recall)
    analysis = analysis_scores(pairs)
    return {"spot_f1": spot_f1, "spot_precision": spot_precision, "spot_recall": spot_recall, "tp": tp, "fp": fp,
            "fn": fn, **analysis, "strs": spot_f1 * analysis["analysis_f1"]}


def analysis_scores(pairs: Sequence[tuple[str, str]]) -> dict:
    emotions = sorted({e for pair in pairs for e in pair})
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
                spots.append(Spot(f"{row['subject']}/{row['video']}", onset, offset, row["emotion"].lower()))
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


def pool_folds(test_dirs: Sequence[Path], out: Path) -> list[str]:
    """Join the folds' submission files into `out` and score them together (counts summed over every video of
    every fold); writes scores.json {"learned": ..., "baseline": ...}; returns the summary lines."""
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
    return lines


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
                f"recall {scores['analysis_recall']:.4f})", f"STRS {scores['strs']:.4f}"]
    return [f"{kind:8s} F1 {s['f1']:.4f}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  "
            f"(hits {s['hits']}, ground truth {s['gt']}, predictions {s['pred']})" for kind, s in scores.items()]


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
