"""Write synthetic samples to disk.

    python -m common.synth --task emotion --out DIR --subjects 0-9 --per-subject 20 [--size 224 --seed 0]
    python -m common.synth --task au --out DIR --subjects 0-4 --per-subject 50
    python -m common.synth --task clip --out DIR --subjects 0-4 --per-subject 4 --kind micro --fps 200

emotion: DIR/<subject>/<index>.png + labels.csv (path,subject,label,emotion)
au:      DIR/<subject>/<index>.png + labels.csv (path,subject,AU1,...,AU45; activation 0..1, *5 = FACS)
clip:    DIR/<subject>/<index>/<frame>.png + labels.csv (path,subject,emotion_label,emotion,kind,fps,
         n_frames,onset,apex,offset,aus)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2

from .face import AUS
from .samples import EMOTIONS, KINDS, au_sample, emotion_sample, expression_clip


def parse_subjects(text: str) -> list[int]:
    """'0-9', '3', '0,2,5-7' -> sorted unique subject ids."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            a, b = (int(lo), int(hi)) if sep else (int(lo), int(lo))
            if a < 0 or b < a:
                raise ValueError
            out.update(range(a, b + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad subject list {text!r}: use ids >= 0 like '0-9' or '0,2,5-7'") from None
    if not out:
        raise argparse.ArgumentTypeError("subject list is empty")
    return sorted(out)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.synth", description="Write synthetic FACS face samples.")
    p.add_argument("--task", required=True, choices=("emotion", "au", "clip"))
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--subjects", required=True, type=parse_subjects, help="e.g. 0-9 or 0,2,5-7")
    p.add_argument("--per-subject", required=True, type=_positive_int)
    p.add_argument("--size", type=_positive_int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, choices=(7, 8), default=7, help="emotion: 7 drops contempt")
    p.add_argument("--kind", choices=KINDS, default="micro", help="clip: micro or macro expression")
    p.add_argument("--fps", type=_positive_float, default=200.0, help="clip: frame rate")
    p.add_argument("--n-frames", type=_positive_int, default=None, help="clip: fixed clip length")
    return p


def _save_png(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


class _Progress:
    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0

    def step(self) -> None:
        self.done += 1
        if self.done == self.total or self.done % max(1, self.total // 100) == 0:
            end = "\n" if self.done == self.total else ""
            print(f"\r{self.label}: {self.done}/{self.total}", end=end, file=sys.stderr, flush=True)


def _sample_seed(seed: int, subject: int, k: int) -> int:
    return seed * 1_000_003 + subject * 10_007 + k


def write_emotion(args) -> int:
    rows = []
    progress = _Progress(len(args.subjects) * args.per_subject, "emotion")
    for subject in args.subjects:
        for k in range(args.per_subject):
            label = (subject + k) % args.num_classes
            image, _ = emotion_sample(subject, label, _sample_seed(args.seed, subject, k), args.size)
            rel = Path(f"{subject:03d}") / f"{k:05d}.png"
            _save_png(args.out / rel, image)
            rows.append((rel.as_posix(), subject, label, EMOTIONS[label]))
            progress.step()
    _write_csv(args.out / "labels.csv", ("path", "subject", "label", "emotion"), rows)
    return len(rows)


def write_au(args) -> int:
    rows = []
    progress = _Progress(len(args.subjects) * args.per_subject, "au")
    for subject in args.subjects:
        for k in range(args.per_subject):
            image, aus = au_sample(subject, _sample_seed(args.seed, subject, k), args.size)
            rel = Path(f"{subject:03d}") / f"{k:05d}.png"
            _save_png(args.out / rel, image)
            rows.append((rel.as_posix(), subject, *(f"{aus[au]:.4f}" for au in AUS)))
            progress.step()
    _write_csv(args.out / "labels.csv", ("path", "subject", *(f"AU{au}" for au in AUS)), rows)
    return len(rows)


def write_clip(args) -> int:
    rows = []
    progress = _Progress(len(args.subjects) * args.per_subject, f"{args.kind} clips")
    for subject in args.subjects:
        for k in range(args.per_subject):
            clip = expression_clip(subject, _sample_seed(args.seed, subject, k), kind=args.kind, fps=args.fps,
                                   n_frames=args.n_frames, size=args.size)
            rel = Path(f"{subject:03d}") / f"{k:05d}"
            for i, frame in enumerate(clip.frames):
                _save_png(args.out / rel / f"{i:05d}.png", frame)
            aus = "+".join(f"{au}:{v:.3f}" for au, v in sorted(clip.aus.items()))
            rows.append((rel.as_posix(), subject, clip.emotion, EMOTIONS[clip.emotion], clip.kind, clip.fps,
                         len(clip.frames), clip.onset, clip.apex, clip.offset, aus))
            progress.step()
    header = ("path", "subject", "emotion_label", "emotion", "kind", "fps", "n_frames", "onset", "apex", "offset", "aus")
    _write_csv(args.out / "labels.csv", header, rows)
    return len(rows)


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task == "clip" and args.kind == "macro" and args.n_frames is not None:
        needed = int(args.fps * 0.5 + 0.999999) + 2
        if args.n_frames < needed:
            parser.error(f"--n-frames {args.n_frames} is too short for a macro expression at {args.fps} fps "
                         f"(needs >= {needed})")
    if args.task == "clip" and args.n_frames is not None and args.n_frames < 5:
        parser.error("--n-frames must be >= 5")
    writer = {"emotion": write_emotion, "au": write_au, "clip": write_clip}[args.task]
    n = writer(args)
    print(f"wrote {n} {args.task} samples to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
