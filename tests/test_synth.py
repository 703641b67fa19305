"""Tests of the synthetic FACS face generator (common.synth): determinism, label/pixel consistency,
clip and long-video timing rules, identities, datasets and the disk writer."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch

from common.synth import (
    AU_OCCURRENCE_THRESHOLD,
    AUS,
    EMOTION_PROTOTYPES,
    EMOTIONS,
    UNILATERAL_AUS,
    Nuisance,
    au_occurrence,
    au_sample,
    emotion_aus,
    emotion_sample,
    expression_clip,
    identity,
    long_video,
    render_face,
)
from common.synth.__main__ import main as synth_main
from common.synth.datasets import SyntheticAUDataset, SyntheticEmotionDataset

CLEAN = Nuisance()  # frontal, no lighting change, blur or noise: pixel differences come from the AUs only
UPPER_FACE_AUS = (1, 2, 4, 5, 7, 45)
LOWER_FACE_AUS = (12, 14, 15, 17, 20, 23, 24, 25, 26, 27)


def _upper_lower_change(au: int, subject: int = 3, size: int = 128) -> tuple[float, float]:
    """Mean absolute pixel change above and below the nose tip when AU goes 0 -> 1."""
    neutral, marks = render_face({}, subject, size=size, nuisance=CLEAN, return_landmarks=True)
    active = render_face({au: 1.0}, subject, size=size, nuisance=CLEAN)
    diff = np.abs(active.astype(np.int16) - neutral.astype(np.int16)).sum(-1)
    nose_y = int(marks[2, 1])
    return float(diff[:nose_y].mean()), float(diff[nose_y:].mean())


def _eye_box(marks: np.ndarray, k: int, half: int) -> tuple[slice, slice]:
    x, y = marks[k].round().astype(int)
    return slice(y - half, y + half), slice(x - 2 * half, x + 2 * half)


# ---- rendering ------------------------------------------------------------------------------

def test_render_is_deterministic_and_seed_dependent():
    a = render_face({12: 0.7, 6: 0.4}, 5, size=96, seed=11)
    b = render_face({12: 0.7, 6: 0.4}, 5, size=96, seed=11)
    c = render_face({12: 0.7, 6: 0.4}, 5, size=96, seed=12)
    assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_fixed_pose_overrides_the_drawn_pose():
    _, m1 = render_face({}, 2, size=128, seed=1, pose=(0.0, 1.0, 0.0), return_landmarks=True)
    _, m2 = render_face({}, 2, size=128, seed=2, pose=(0.0, 1.0, 0.0), return_landmarks=True)
    _, m3 = render_face({}, 2, size=128, seed=2, return_landmarks=True)
    np.testing.assert_allclose(m1, m2, atol=0.6)  # only gaze differs between seeds
    assert np.abs(m3 - m2).max() > 1.0
    assert m1.dtype == np.float32 and m1.shape == (5, 2)
    assert m1[0, 0] < m1[2, 0] < m1[1, 0]  # left eye, nose, right eye from left to right
    assert m1[2, 1] < m1[3, 1]  # nose above the mouth


@pytest.mark.parametrize("au", UPPER_FACE_AUS)
def test_upper_face_aus_change_the_upper_face(au):
    upper, lower = _upper_lower_change(au)
    assert upper > 1.0 and upper > 2 * lower


@pytest.mark.parametrize("au", LOWER_FACE_AUS)
def test_lower_face_aus_change_the_lower_face(au):
    upper, lower = _upper_lower_change(au)
    assert lower > 0.5 and lower > 2 * upper


@pytest.mark.parametrize("au", (6, 9, 10))
def test_mid_face_aus_change_the_image(au):
    upper, lower = _upper_lower_change(au)
    assert upper + lower > 1.0


def test_happy_prototype_pulls_mouth_corners_up():
    aus = emotion_aus(EMOTIONS.index("happy"), 1.0, np.random.default_rng(0))
    assert aus[12] > 0.5 and aus[6] > 0.3
    _, neutral = render_face({}, 7, size=224, nuisance=CLEAN, return_landmarks=True)
    _, happy = render_face(aus, 7, size=224, nuisance=CLEAN, return_landmarks=True)
    rise = neutral[3:, 1] - happy[3:, 1]  # image y grows downwards
    assert (rise > 3.0).all()
    assert happy[4, 0] - happy[3, 0] > neutral[4, 0] - neutral[3, 0]  # a smile widens the mouth


def test_sad_prototype_pulls_mouth_corners_down():
    aus = emotion_aus(EMOTIONS.index("sad"), 1.0, np.random.default_rng(0))
    _, neutral = render_face({}, 7, size=224, nuisance=CLEAN, return_landmarks=True)
    _, sad = render_face(aus, 7, size=224, nuisance=CLEAN, return_landmarks=True)
    assert (sad[3:, 1] - neutral[3:, 1] > 2.0).all()


def test_blink_closes_the_eyes():
    neutral, marks = render_face({}, 4, size=160, nuisance=CLEAN, return_landmarks=True)
    blink = render_face({45: 1.0}, 4, size=160, nuisance=CLEAN)
    diff = np.abs(blink.astype(np.int16) - neutral.astype(np.int16)).sum(-1)
    for k in (0, 1):
        rows, cols = _eye_box(marks, k, 4)
        assert diff[rows, cols].mean() > 40  # the iris and white are gone
    mouth_rows = slice(int(marks[3, 1]) - 6, int(marks[3, 1]) + 6)
    assert diff[mouth_rows, int(marks[3, 0]):int(marks[4, 0])].max() == 0


def test_contempt_is_one_sided():
    assert UNILATERAL_AUS[EMOTIONS.index("contempt")] == {12: "right", 14: "right"}
    _, neutral = render_face({}, 1, size=224, nuisance=CLEAN, return_landmarks=True)
    _, right = render_face({12: 1.0}, 1, size=224, nuisance=CLEAN, return_landmarks=True, sides={12: "right"})
    _, left = render_face({12: 1.0}, 1, size=224, nuisance=CLEAN, return_landmarks=True, sides={12: "left"})
    assert neutral[4, 1] - right[4, 1] > 3.0 and abs(neutral[3, 1] - right[3, 1]) < 0.5
    assert neutral[3, 1] - left[3, 1] > 3.0 and abs(neutral[4, 1] - left[4, 1]) < 0.5


def test_bad_render_arguments_raise():
    with pytest.raises(ValueError, match="unsupported AU"):
        render_face({43: 1.0}, 0, size=32)
    with pytest.raises(ValueError, match="side"):
        render_face({12: 1.0}, 0, size=32, sides={12: "up"})
    with pytest.raises(ValueError, match="pose"):
        render_face({}, 0, size=32, pose=(1.0, 2.0))
    with pytest.raises(ValueError, match="subject"):
        render_face({}, -1, size=32)


# ---- identities -----------------------------------------------------------------------------

def test_identities_are_deterministic_and_distinct():
    assert identity(3) == identity(3)
    ids = [identity(s) for s in range(12)]
    assert len({(i.face_half_width, i.skin, i.hair) for i in ids}) == 12
    assert len({i.hair_style for i in ids}) >= 3
    assert np.ptp([i.eye_spacing for i in ids]) > 0.01
    assert np.ptp([sum(i.skin) for i in ids]) > 100
    a = render_face({}, 0, size=96, nuisance=CLEAN).astype(np.int16)
    b = render_face({}, 1, size=96, nuisance=CLEAN).astype(np.int16)
    assert np.abs(a - b).mean() > 10


# ---- labels ---------------------------------------------------------------------------------

@pytest.mark.parametrize("label", range(len(EMOTIONS)))
def test_emotion_aus_contain_the_prototype(label):
    rng = np.random.default_rng(label)
    aus = emotion_aus(label, 1.0, rng)
    assert all(au in AUS for au in aus) and all(0.0 <= v <= 1.0 for v in aus.values())
    for au, weight in EMOTION_PROTOTYPES[label].items():
        assert aus[au] >= 0.8 * weight
    extras = {au: v for au, v in aus.items() if au not in EMOTION_PROTOTYPES[label]}
    if label == 0:
        assert all(v < 0.2 for v in extras.values())


def test_emotion_sample_is_deterministic():
    a, aus_a = emotion_sample(2, 1, seed=5, size=64)
    b, aus_b = emotion_sample(2, 1, seed=5, size=64)
    c, _ = emotion_sample(2, 1, seed=6, size=64)
    assert a.tobytes() == b.tobytes() and aus_a == aus_b
    assert a.tobytes() != c.tobytes()
    assert aus_a[12] >= 0.25  # intensity >= 0.3 times a jitter >= 0.85


def test_au_sample_labels_follow_the_rules():
    assert AU_OCCURRENCE_THRESHOLD == 0.4
    counts = Counter()
    for seed in range(40):
        image, aus = au_sample(1, seed, size=32)
        assert image.shape == (32, 32, 3)
        assert tuple(aus) == AUS and all(0.0 <= v <= 1.0 for v in aus.values())
        if max(aus[26], aus[27]) > 0:
            assert aus[25] >= max(aus[26], aus[27])  # a dropped jaw parts the lips
        assert not (aus[24] > 0 and aus[25] > 0)
        occ = au_occurrence(aus)
        assert all(occ[au] == int(aus[au] >= 0.4) for au in AUS)
        counts.update(au for au, v in occ.items() if v)
    assert len(counts) >= 12  # the sampler covers most AUs
    a, _ = au_sample(1, 3, size=32)
    b, _ = au_sample(1, 3, size=32)
    assert a.tobytes() == b.tobytes()


# ---- clips ----------------------------------------------------------------------------------

def _check_profile(clip):
    t = np.arange(len(clip.profile))
    assert int(np.argmax(clip.profile)) == clip.apex and clip.profile[clip.apex] == pytest.approx(1.0)
    outside = (t < clip.onset) | (t > clip.offset)
    assert np.all(clip.profile[outside] == 0.0)
    assert clip.onset > 0 and clip.offset < len(clip.profile) - 1  # neutral frames on both sides
    assert clip.onset < clip.apex < clip.offset


@pytest.mark.parametrize("fps", (200.0, 30.0))
def test_micro_clip_is_short_and_weak(fps):
    clip = expression_clip(1, 3, kind="micro", fps=fps, size=32)
    _check_profile(clip)
    assert clip.frames.shape == (len(clip.profile), 32, 32, 3) and clip.frames.dtype == np.uint8
    assert (clip.offset - clip.onset + 1) / fps < 0.5
    assert 1 <= clip.emotion < len(EMOTIONS)
    assert max(clip.aus[au] for au in EMOTION_PROTOTYPES[clip.emotion]) <= 0.45 * 1.15 + 1e-9


def test_macro_clip_is_longer_and_visible():
    clip = expression_clip(2, 4, kind="macro", fps=30.0, size=64, emotion=EMOTIONS.index("surprise"))
    _check_profile(clip)
    assert 0.5 <= (clip.offset - clip.onset + 1) / clip.fps <= 4.0
    assert clip.emotion == EMOTIONS.index("surprise") and clip.aus[26] > 0.3
    f = clip.frames.astype(np.int16)
    noise_change = np.abs(f[1] - f[0]).mean()
    apex_change = np.abs(f[clip.apex] - f[0]).mean()
    assert apex_change > 3 * noise_change


def test_clip_with_fixed_length():
    clip = expression_clip(0, 1, kind="micro", fps=200.0, n_frames=16, size=32)
    assert len(clip.frames) == 16
    _check_profile(clip)
    with pytest.raises(ValueError, match="macro"):
        expression_clip(0, 1, kind="macro", fps=30.0, n_frames=10, size=32)
    with pytest.raises(ValueError, match="kind"):
        expression_clip(0, 1, kind="tiny", size=32)


# ---- long videos ----------------------------------------------------------------------------

def test_long_video_events_are_valid():
    for seed in range(4):
        video = long_video(3, seed, fps=30.0, seconds=30.0, size=32)
        assert video.n_frames == 900 and video.events
        prev_offset = -1
        for ev in video.events:
            assert prev_offset < ev.onset < ev.apex < ev.offset < video.n_frames
            seconds = (ev.offset - ev.onset + 1) / video.fps
            assert (seconds < 0.5) if ev.kind == "micro" else (0.5 <= seconds <= 4.0)
            assert 1 <= ev.emotion < len(EMOTIONS)
            prev_offset = ev.offset
        assert video.blinks and all(0 <= b[0] < b[2] < video.n_frames for b in video.blinks)
        profile = video.profile
        assert profile.shape == (video.n_frames,) and profile.max() == pytest.approx(1.0)


def test_long_video_frames_are_lazy_and_deterministic():
    video = long_video(5, 1, fps=30.0, seconds=4.0, size=32)
    again = long_video(5, 1, fps=30.0, seconds=4.0, size=32)
    block = video.frames(10, 13)
    assert block.shape == (3, 32, 32, 3)
    assert block[1].tobytes() == video.frame(11).tobytes() == again.frame(11).tobytes()
    with pytest.raises(IndexError):
        video.frame(video.n_frames)
    blink = video.blinks[0][1]
    aus, _ = video.aus_at(blink)
    assert aus[45] == pytest.approx(1.0)


# ---- datasets -------------------------------------------------------------------------------

def test_emotion_dataset_is_balanced_and_deterministic():
    ds = SyntheticEmotionDataset([4, 9], per_subject=14, num_classes=7, size=32, seed=3)
    assert len(ds) == 28 and Counter(ds.labels) == {k: 4 for k in range(7)}
    assert ds.subject_of(0) == 4 and ds.subject_of(27) == 9
    later = ds[20]["input"]
    item = ds[3]
    image, label = item["input"], item["target"]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == ds.labels[3]
    assert (item["dataset"], item["subject"]) == ("synthetic", "4") and ds[20]["subject"] == "9"
    assert len({ds[i]["sample"] for i in range(len(ds))}) == len(ds), "sample ids must be unique"
    fresh = SyntheticEmotionDataset([4, 9], per_subject=14, num_classes=7, size=32, seed=3)
    assert torch.equal(fresh[20]["input"], later) and torch.equal(fresh[3]["input"], image)
    other_seed = SyntheticEmotionDataset([4, 9], per_subject=14, num_classes=7, size=32, seed=4)
    assert not torch.equal(other_seed[3]["input"], image)
    assert set(SyntheticEmotionDataset([0], 16, num_classes=8, size=32).labels) == set(range(8))
    with pytest.raises(ValueError):
        SyntheticEmotionDataset([0], 4, num_classes=5)


def test_emotion_dataset_same_in_worker_processes():
    ds = SyntheticEmotionDataset([1], per_subject=4, size=32, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    images = torch.cat([batch["input"] for batch in loader])
    assert torch.equal(images, torch.stack([ds[i]["input"] for i in range(4)]))


def test_au_labels_are_known_without_rendering():
    ds = SyntheticAUDataset([3, 4], per_subject=3, size=32, seed=5)
    assert all(np.array_equal(ds.activations(i), ds[i]["target"].numpy()) for i in range(len(ds)))


def test_au_dataset_returns_au_vector():
    item = SyntheticAUDataset([2], per_subject=2, size=32)[1]
    image, target = item["input"], item["target"]
    assert item["subject"] == "2" and item["dataset"] == "synthetic"
    assert image.shape == (3, 32, 32) and target.shape == (len(AUS),) and target.dtype == torch.float32


# ---- disk writer ----------------------------------------------------------------------------

def test_cli_writes_emotion_images_and_labels(tmp_path):
    assert synth_main(["--task", "emotion", "--out", str(tmp_path), "--subjects", "0,2", "--per-subject", "3",
                       "--size", "32"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert len(rows) == 6 and {r["subject"] for r in rows} == {"0", "2"}
    for r in rows:
        assert (tmp_path / r["path"]).is_file() and EMOTIONS[int(r["label"])] == r["emotion"]


def test_cli_writes_au_intensities(tmp_path):
    synth_main(["--task", "au", "--out", str(tmp_path), "--subjects", "1", "--per-subject", "2", "--size", "32"])
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert len(rows) == 2 and list(rows[0])[2:] == [f"AU{au}" for au in AUS]
    assert all(0.0 <= float(r[f"AU{au}"]) <= 1.0 for r in rows for au in AUS)


def test_cli_writes_clips(tmp_path):
    synth_main(["--task", "clip", "--out", str(tmp_path), "--subjects", "1", "--per-subject", "1", "--size", "32",
                "--fps", "30", "--n-frames", "8"])
    (row,) = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert len(list((tmp_path / row["path"]).glob("*.png"))) == 8
    assert 0 < int(row["onset"]) < int(row["apex"]) < int(row["offset"]) < 7


def test_cli_defaults_write_ten_identities(tmp_path):
    assert synth_main(["--task", "emotion", "--out", str(tmp_path), "--size", "24"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert {r["subject"] for r in rows} == {str(s) for s in range(10)} and len(rows) == 100


def test_cli_writes_a_video_with_its_ground_truth(tmp_path):
    import cv2

    from common.synth import long_video
    from spotting.evaluate import read_spots

    path = tmp_path / "clip.mp4"
    assert synth_main(["--video", str(path), "--seconds", "6", "--size", "64", "--subject", "3"]) == 0
    assert int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == 180
    truth = read_spots(tmp_path / "clip_ground_truth.csv")  # the submission format spotting.evaluate reads
    planted = long_video(3, 0, fps=30.0, seconds=6, size=64).events
    assert [(s.video, s.onset, s.offset, s.label) for s in truth] == [("clip", e.onset, e.offset, e.kind) for e in planted]
    assert truth, "six seconds hold at least one planted expression"


@pytest.mark.parametrize("name", ["casme2", "casme3", "disfa", "rafdb", "fer2013", "samm_lv"])
def test_cli_writes_a_tree_its_loader_reads(tmp_path, name, capsys):
    from common.data import load_samples
    from common.synth.__main__ import FORMATS

    assert synth_main(["--format", name, "--out", str(tmp_path)]) == 0
    task = FORMATS[name][0]
    assert load_samples(name, tmp_path, task=task)
    assert f"common.inspect --task {task} --dataset {name} --root {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["--task", "emotion", "--subjects", "0", "--per-subject", "2"],
    ["--task", "emotion", "--format", "rafdb", "--out", "x"],
    ["--task", "emotion", "--out", "x", "--subjects", "3-1", "--per-subject", "2"],
    ["--task", "emotion", "--out", "x", "--subjects", "a", "--per-subject", "2"],
    ["--task", "emotion", "--out", "x", "--subjects", "0", "--per-subject", "0"],
    ["--task", "faces", "--out", "x", "--subjects", "0", "--per-subject", "1"],
    ["--task", "clip", "--out", "x", "--subjects", "0", "--per-subject", "1", "--kind", "macro", "--n-frames", "6"],
])
def test_cli_rejects_bad_arguments(args, capsys):
    with pytest.raises(SystemExit) as exc:
        synth_main(args)
    assert exc.value.code == 2 and "error" in capsys.readouterr().err
