"""Write synthetic samples, a synthetic video, or a tiny tree in a real dataset's format to disk.

    python -m common.synth --task emotion --out DIR [--subjects 0-9 --per-subject 10 --size 224 --seed 0]
    python -m common.synth --task au --out DIR --subjects 0-4 --per-subject 50
    python -m common.synth --task clip --out DIR --subjects 0-4 --per-subject 4 --kind micro --fps 200
    python -m common.synth --video OUT.mp4 [--seconds 20 --fps 30 --size 256 --subject 0 --seed 0]
    python -m common.synth --format casme2 --out DIR [--seed 0]

emotion: DIR/<subject>/<index>.png + labels.csv (path,subject,label,emotion)
au:      DIR/<subject>/<index>.png + labels.csv (path,subject,AU1,...,AU45; activation 0..1, *5 = FACS)
clip:    DIR/<subject>/<index>/<frame>.png + labels.csv (path,subject,emotion_label,emotion,kind,fps,
         n_frames,onset,apex,offset,aus)
--video: a long video of one synthetic face filling the frame, with micro- and macro-expressions among blinks
         and head drift, and beside it OUT_ground_truth.csv (vid,onset,offset,type,apex,emotion, frames counted
         from 0 as the runtime counts them: the MEGC submission format `spotting.evaluate` reads)
--format: a small tree laid out and annotated as the real dataset is (FORMATS), synthetic faces for pixels,
         for trying a loader, `common.inspect` or a recipe before the licensed data arrives
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2

from common.console import Progress

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


# --format name -> (task, writer in common.synth.formats, keyword arguments)
FORMATS = {
    "casme2": ("microexp", "microexp:write_casme2", {"subjects": 3, "per_subject": 3}),
    "samm": ("microexp", "microexp:write_samm", {"subjects": 3, "per_subject": 3}),
    "smic": ("microexp", "microexp:write_smic", {"subjects": 3, "per_subject": 3}),
    "casme3": ("microexp", "microexp:write_casme3", {"subjects": 3, "per_subject": 4}),
    "bp4d": ("au", "au:write_bp4d", {}),
    "disfa": ("au", "au:write_disfa", {}),
    "rafdb": ("emotion", "emotion:write_rafdb", {}),
    "affectnet": ("emotion", "emotion:write_affectnet", {}),
    "affectnet_npy": ("emotion", "emotion:write_affectnet_npy", {}),
    "fer2013": ("emotion", "emotion:write_fer2013", {}),
    "ferplus": ("emotion", "emotion:write_ferplus", {}),
    "casme_sq": ("spotting", "spotting:write_casme2_lv", {"subjects": 2}),
    "samm_lv": ("spotting", "spotting:write_samm_lv", {"subjects": 2}),
    "casme3_lv": ("spotting", "spotting:write_casme3_lv", {"subjects": 2}),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.synth", description="Write synthetic FACS face samples, a "
                                "synthetic video with its ground truth, or a tree in a real dataset's format.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=("emotion", "au", "clip"), help="samples of one kind")
    what.add_argument("--video", type=Path, help="a long video (.mp4 or .avi) with planted expressions")
    what.add_argument("--format", choices=sorted(FORMATS), help="a tiny tree in this dataset's on-disk format")
    p.add_argument("--out", type=Path, help="output folder (created); --task and --format")
    p.add_argument("--subjects", type=parse_subjects, default=parse_subjects("0-9"), help="e.g. 0-9 (default) or 0,2,5-7")
    p.add_argument("--per-subject", type=_positive_int, default=10, help="samples per subject (default 10)")
    p.add_argument("--size", type=_positive_int, default=None, help="frame side (default 224; --video 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, choices=(7, 8), default=7, help="emotion: 7 drops contempt")
    p.add_argument("--kind", choices=KINDS, default="micro", help="clip: micro or macro expression")
    p.add_argument("--fps", type=_positive_float, default=200.0, help="clip: frame rate")
    p.add_argument("--n-frames", type=_positive_int, default=None, help="clip: fixed clip length")
    p.add_argument("--seconds", type=_positive_float, default=20.0, help="--video: length (default 20 s)")
    p.add_argument("--subject", type=int, default=0, help="--video: which synthetic identity")
    return p


def _save_png(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def _sample_seed(seed: int, subject: int, k: int) -> int:
    return seed * 1_000_003 + subject * 10_007 + k


def write_emotion(args) -> int:
    rows = []
    progress = Progress(len(args.subjects) * args.per_subject, "emotion faces")
    for subject in args.subjects:
        for k in range(args.per_subject):
            label = (subject + k) % args.num_classes
            image, _ = emotion_sample(subject, label, _sample_seed(args.seed, subject, k), args.size)
            rel = Path(f"{subject:03d}") / f"{k:05d}.png"
            _save_png(args.out / rel, image)
            rows.append((rel.as_posix(), subject, label, EMOTIONS[label]))
            progress.step()
    progress.close()
    _write_csv(args.out / "labels.csv", ("path", "subject", "label", "emotion"), rows)
    return len(rows)


def write_au(args) -> int:
    rows = []
    progress = Progress(len(args.subjects) * args.per_subject, "AU faces")
    for subject in args.subjects:
        for k in range(args.per_subject):
            image, aus = au_sample(subject, _sample_seed(args.seed, subject, k), args.size)
            rel = Path(f"{subject:03d}") / f"{k:05d}.png"
            _save_png(args.out / rel, image)
            rows.append((rel.as_posix(), subject, *(f"{aus[au]:.4f}" for au in AUS)))
            progress.step()
    progress.close()
    _write_csv(args.out / "labels.csv", ("path", "subject", *(f"AU{au}" for au in AUS)), rows)
    return len(rows)


def write_clip(args) -> int:
    rows = []
    progress = Progress(len(args.subjects) * args.per_subject, f"{args.kind} clips")
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
    progress.close()
    header = ("path", "subject", "emotion_label", "emotion", "kind", "fps", "n_frames", "onset", "apex", "offset", "aus")
    _write_csv(args.out / "labels.csv", header, rows)
    return len(rows)


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_video(args) -> int:
    """The video and its ground truth; the fps given is the video's (default 30 unless --fps says otherwise)."""
    from .samples import long_video

    fps = args.fps if args.fps_given else 30.0
    video = long_video(args.subject, args.seed, fps=fps, seconds=args.seconds, size=args.size or 256)
    path = args.video
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "MJPG" if path.suffix.lower() == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (video.size, video.size))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write this video (use .mp4 or .avi)")
    progress = Progress(video.n_frames, "frames")
    for i in range(video.n_frames):
        writer.write(cv2.cvtColor(video.frame(i), cv2.COLOR_RGB2BGR))
        progress.step()
    progress.close()
    writer.release()
    truth = path.with_name(path.stem + "_ground_truth.csv")
    _write_csv(truth, ("vid", "onset", "offset", "type", "apex", "emotion"),
               [(path.stem, e.onset, e.offset, "me" if e.kind == "micro" else "mae", e.apex, EMOTIONS[e.emotion])
                for e in video.events])
    print(f"wrote {path} ({video.n_frames} frames at {fps:g} fps, {len(video.events)} expressions) and {truth}; "
          f"try: python -m runtime {path} --models DIR --out results.csv --detector none", file=sys.stderr)
    return video.n_frames


def write_format(args) -> int:
    """A tree in a real dataset's format; prints the command that inspects it."""
    import importlib

    task, writer, options = FORMATS[args.format]
    module, _, function = writer.partition(":")
    written = getattr(importlib.import_module(f"common.synth.formats.{module}"), function)(args.out, seed=args.seed,
                                                                                           **options)
    print(f"wrote a {args.format} tree with {len(written.records)} samples to {args.out}; try: python -m "
          f"common.inspect --task {task} --dataset {args.format} --root {args.out}", file=sys.stderr)
    return len(written.records)


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.fps_given = any(a == "--fps" or a.startswith("--fps=") for a in argv)
    if args.video is not None:
        return 0 if write_video(args) else 1
    if args.out is None:
        parser.error(f"--{'format' if args.format else 'task'} needs --out DIR")
    if args.format:
        write_format(args)
        return 0
    args.size = args.size or 224
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
