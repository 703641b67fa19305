"""`python -m common.inspect --task T --dataset D --root R [--json] [--no-media]`: what a loader found.

Samples (those with a class, i.e. what training sees; `parsed` counts every annotated one), subjects, per-class
counts (in the task's default class scheme), per-dataset parts of a joint set or composite, rows left out and why,
and (unless --no-media) frames missing inside annotated intervals, damaged frame files (empty, not an image, a JPEG
cut short: inside the annotated intervals, or the whole video where a sample has none; training reads the
nearest readable frame in their place) and sources that cannot be opened: read this before a week of training is
spent. `--json` prints one object with the keys `samples`, `subjects` (a count), `classes` ({name: count}),
`by_dataset` ({name: the same keys}), `left_out` ({reason: count}), `frames_missing`, `frames_damaged`,
`damaged` ([files], the first 20), `unreadable` ([messages]), and what a task adds (action units: `au_positive`
and `au_unknown`, {"AU01": count}; spotting: `classes` counts intervals by type, plus `macro`, `micro` and
`videos`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import yaml

from common.data import collect_left_out, load_samples
from common.data.readers import FrameFolder, ReadError, looks_readable, open_sample
from common.datamodule import per_dataset
from common.errors import concise
from common.tasks import get_task

UNREADABLE_SHOWN = 20
BASE_KEYS = ("samples", "parsed", "subjects", "classes", "left_out", "frames_missing", "frames_damaged", "damaged",
             "unreadable")


def describe(task: str, dataset: str, root, media: bool = True, progress: bool = False) -> dict:
    module = get_task(task).datamodule_class()
    parts = module.dataset_parts(dataset)
    roots = per_dataset(root, parts, "root")
    by_dataset = {name: describe_one(module, task, dataset, name, Path(r), media, progress)
                  for name, r in zip(parts, roots)}
    return {**merge(by_dataset.values()), "by_dataset": by_dataset}


def describe_one(module, task: str, requested: str, name: str, root: Path, media: bool, progress: bool) -> dict:
    with collect_left_out() as parser_left_out:
        samples = load_samples(name, root, task)
    classes, left_out, kept = Counter(), Counter(parser_left_out.get(name, Counter())), []
    for sample in samples:
        label, reason = module.class_of(requested, name, sample)
        if label is None:
            left_out[reason] += 1
        else:
            classes[label] += 1
            kept.append(sample)
    found = {"samples": len(kept), "parsed": len(samples), "subjects": len({s.subject for s in kept if s.subject}),
             "classes": dict(sorted(classes.items())), "left_out": dict(sorted(left_out.items())),
             "frames_missing": 0, "frames_damaged": 0, "damaged": [], "unreadable": [],
             **module.label_counts(requested, name, kept)}
    if media:
        found.update(check_media(samples, name, progress))
    return found


def check_media(samples: Sequence, name: str, progress: bool) -> dict:
    """Open every source; count annotated frame numbers that the source does not hold, and damaged frame files."""
    missing, damaged, unreadable, last = 0, set(), [], time.monotonic()
    for i, sample in enumerate(samples, start=1):
        try:
            with open_sample(sample) as source:
                if sample.interval is not None:
                    wanted = set(range(sample.interval.onset, sample.interval.offset + 1))
                    missing += len(wanted - set(source.numbers.tolist()))
                damaged.update(damaged_files(source, sample.interval))
        except (ReadError, OSError) as error:
            unreadable.append(concise(error))
        if progress and time.monotonic() - last > 10:
            last = time.monotonic()
            print(f"{name}: {i}/{len(samples)} sources opened", file=sys.stderr, flush=True)
    return {"frames_missing": missing, "frames_damaged": len(damaged),
            "damaged": sorted(damaged)[:UNREADABLE_SHOWN], "unreadable": unreadable}


def damaged_files(source, interval) -> list[str]:
    """Frame files of a folder that fail the cheap look, inside the interval (the whole folder without one)."""
    if not isinstance(source, FrameFolder):
        return []
    inside = [f for n, f in zip(source.numbers, source.files)
              if interval is None or interval.onset <= n <= interval.offset]
    return [str(f) for f in inside if not looks_readable(f)]


def merge(parts) -> dict:
    parts = list(parts)
    classes, left_out = Counter(), Counter()
    extra: dict[str, Counter | int] = {}
    for part in parts:
        classes.update(part["classes"])
        left_out.update(part["left_out"])
        for key, counts in part.items():
            if key not in BASE_KEYS and key != "by_dataset":
                if isinstance(counts, int):
                    extra[key] = extra.get(key, 0) + counts
                else:
                    extra.setdefault(key, Counter()).update(counts)
    return {"samples": sum(p["samples"] for p in parts), "parsed": sum(p["parsed"] for p in parts), "subjects": sum(p["subjects"] for p in parts),
            "classes": dict(sorted(classes.items())), "left_out": dict(sorted(left_out.items())),
            "frames_missing": sum(p["frames_missing"] for p in parts),
            "frames_damaged": sum(p["frames_damaged"] for p in parts),
            "damaged": [f for p in parts for f in p["damaged"]][:UNREADABLE_SHOWN],
            "unreadable": [u for p in parts for u in p["unreadable"]],
            **{key: counts if isinstance(counts, int) else dict(sorted(counts.items())) for key, counts in extra.items()}}


def text(report: dict, dataset: str) -> str:
    lines = [f"{dataset}: {report['samples']} samples ({report['parsed']} annotated), {report['subjects']} subjects"]
    lines.append("classes: " + (", ".join(f"{k} {v}" for k, v in report["classes"].items()) or "none"))
    for name, part in report["by_dataset"].items() if len(report["by_dataset"]) > 1 else ():
        lines.append(f"  {name}: {part['samples']} samples, {part['subjects']} subjects; "
                     + ", ".join(f"{k} {v}" for k, v in part["classes"].items()))
    lines.append("left out: " + (", ".join(f"{v} {k}" for k, v in report["left_out"].items()) or "nothing"))
    lines.append(f"frames missing inside annotated intervals: {report['frames_missing']}")
    lines.append(f"damaged frame files (the nearest readable frame stands in): {report['frames_damaged']}")
    lines += [f"  {path}" for path in report["damaged"]]
    for key in report:
        if key not in BASE_KEYS and key != "by_dataset":
            value = report[key]
            lines.append(f"{key}: " + (str(value) if isinstance(value, int)
                                       else ", ".join(f"{k} {v}" for k, v in value.items())))
    lines.append(f"sources that cannot be read: {len(report['unreadable'])}")
    lines += [f"  {message}" for message in report["unreadable"][:UNREADABLE_SHOWN]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--dataset", required=True, help="a dataset, a composite (megc2019) or several joined by +")
    parser.add_argument("--root", required=True,
                        help="the dataset folder, or a mapping for a joint set: \"{casme2: DIR, samm: DIR}\"")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-media", dest="media", action="store_false", help="parse the annotations only")
    args = parser.parse_args(argv)
    root = yaml.safe_load(args.root) if args.root.lstrip().startswith(("{", "[")) else args.root
    try:
        report = describe(args.task, args.dataset, root, args.media, progress=not args.json)
    except (ValueError, KeyError, FileNotFoundError, OSError) as error:
        print(f"inspect: {concise(error)}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else text(report, args.dataset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
