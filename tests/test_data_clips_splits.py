"""Clip sampling edge cases and subject splits."""
import numpy as np
import pytest

from common.data.clips import clip_positions, gather_clip, sliding_windows, window_positions
from common.data.records import Interval
from common.data.splits import (fixed_folds, kfold_subjects, load_folds, loso_folds, make_folds, resolve_folds,
                                save_folds, split_fold)

# ---------------------------------------------------------------- clip positions


def test_uniform_over_a_long_interval_gives_real_frames_from_onset_to_offset():
    positions = clip_positions(Interval(100, 130, 163), length=16)
    assert len(positions) == 16 and positions[0] == 100 and positions[-1] == 163
    assert np.array_equal(positions, np.rint(positions)) and np.all(np.diff(positions) > 0)


def test_interval_shorter_than_clip_is_interpolated_not_repeated():
    positions = clip_positions(Interval(10, 12, 14), length=16)
    assert positions[0] == 10 and positions[-1] == 14
    assert len(np.unique(positions)) == 16  # fractional, evenly spaced


def test_onset_equal_offset_gives_copies_of_that_frame():
    for policy in ("uniform", "apex"):
        assert clip_positions(Interval(7, 7, 7), length=16, policy=policy).tolist() == [7.0] * 16
    assert clip_positions(Interval(7, None, 7), policy="onset_apex").tolist() == [7.0, 7.0]


def test_apex_centred_window_and_its_edges():
    centred = clip_positions(Interval(0, 50, 100), length=16, policy="apex")
    assert centred[8] == 50 and np.all(np.diff(centred) == 1)
    early = clip_positions(Interval(0, 3, 100), length=16, policy="apex")
    assert early[0] == 0 and 3 in early  # shifted to stay inside the interval
    stepped = clip_positions(Interval(0, 50, 100), length=8, policy="apex", step=4)
    assert stepped[4] == 50 and np.all(np.diff(stepped) == 4)


def test_apex_in_a_short_interval_stays_at_the_centre_position():
    positions = clip_positions(Interval(10, 11, 15), length=16, policy="apex")
    assert positions[8] == 11 and positions[0] == 10 and positions[-1] == 15
    assert np.all(np.diff(positions) >= 0)


def test_missing_apex_means_middle():
    interval = Interval(10, None, 30)
    assert clip_positions(interval, policy="onset_apex").tolist() == [10, 20]
    assert clip_positions(interval, length=5, policy="apex")[2] == 20


def test_random_uniform_stays_in_segments():
    rng = np.random.default_rng(0)
    positions = clip_positions(Interval(0, None, 159), length=16, rng=rng)
    edges = np.linspace(0, 159, 17)
    assert np.all((positions >= edges[:-1] - 0.5) & (positions <= edges[1:] + 0.5))  # rounded to a frame
    assert not np.array_equal(positions, clip_positions(Interval(0, None, 159), length=16, rng=rng))


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="offset 3 is before onset 5"):
        Interval(5, None, 3)
    with pytest.raises(ValueError, match="apex 9 lies outside"):
        Interval(1, 9, 5)
    with pytest.raises(ValueError, match="clip policy"):
        clip_positions(Interval(1, 2, 3), policy="random")


# ---------------------------------------------------------------- gathering frames


def numbered_frames(numbers):
    return np.stack([np.full((2, 2, 3), 10 * n, np.uint8) for n in numbers])


def test_gather_blends_neighbours_linearly():
    available = np.arange(10, 15)
    frames = numbered_frames(available)
    clip = gather_clip(lambda p: frames[p], np.array([10, 10.5, 12.25, 14]), available)
    assert clip[:, 0, 0, 0].tolist() == [100, 105, 122, 140]


def test_gather_fills_gaps_with_nearest_frame():
    available = np.array([1, 2, 5, 6])
    frames = numbered_frames(available)
    clip = gather_clip(lambda p: frames[p], np.array([1, 3, 4, 6]), available)
    assert (clip[:, 0, 0, 0] // 10).tolist() == [1, 2, 5, 6]


def test_sliding_windows_cover_the_tail():
    assert sliding_windows(0, 99, 32, 16) == [(0, 31), (16, 47), (32, 63), (48, 79), (64, 95), (68, 99)]
    assert sliding_windows(1, 10, 32, 16) == [(1, 10)]
    assert window_positions(0, 63, 16).tolist() == np.rint(np.linspace(0, 63, 16)).tolist()


# ---------------------------------------------------------------- splits


SUBJECTS = [f"sub{i}" for i in (1, 2, 10, 3, 11, 4, 5, 6, 7, 8, 9, 12)]


def test_loso_is_one_fold_per_subject_in_natural_order():
    folds = loso_folds(SUBJECTS)
    assert folds["sub1"] == 0 and folds["sub2"] == 1 and folds["sub10"] == 9
    assert sorted(folds.values()) == list(range(12))


def test_kfold_is_deterministic_and_disjoint():
    a = kfold_subjects(SUBJECTS, k=3, seed=7)
    assert a == kfold_subjects(list(reversed(SUBJECTS)), k=3, seed=7)
    assert a != kfold_subjects(SUBJECTS, k=3, seed=8)
    assert sorted(a) == sorted(SUBJECTS) and set(a.values()) == {0, 1, 2}


def test_kfold_balances_sample_counts():
    sizes = {s: (40 if i < 2 else 5) for i, s in enumerate(SUBJECTS)}
    folds = kfold_subjects(SUBJECTS, k=2, seed=0, sizes=sizes)
    totals = [sum(sizes[s] for s in SUBJECTS if folds[s] == f) for f in (0, 1)]
    assert abs(totals[0] - totals[1]) <= 5


def test_published_folds_are_data():
    bp4d, disfa = fixed_folds("bp4d_3fold"), fixed_folds("disfa_3fold")
    assert len(bp4d) == 41 and len(disfa) == 27
    assert bp4d["F007"] == 0 and bp4d["M011"] == 1 and bp4d["F001"] == 2  # fold k tests part 3-k
    assert disfa["SN003"] == 0 and disfa["SN002"] == 2
    with pytest.raises(FileNotFoundError, match="bundled: bp4d_3fold, disfa_3fold"):
        fixed_folds("ck_plus_10fold")


def test_folds_saved_to_run_dir_are_reused(tmp_path):
    first = resolve_folds(SUBJECTS, tmp_path, scheme="kfold", k=4, seed=1)
    assert load_folds(tmp_path / "folds.csv") == first
    again = resolve_folds(SUBJECTS, tmp_path, scheme="kfold", k=4, seed=99)  # the file wins
    assert again == first
    with pytest.raises(ValueError, match=r"\['sub99'\] of this dataset have no fold"):
        resolve_folds(SUBJECTS + ["sub99"], tmp_path)


def test_split_keeps_subjects_apart_and_validation_inside_training(tmp_path):
    sample_subjects = [s for s in SUBJECTS for _ in range(3)]
    folds = make_folds(SUBJECTS, "kfold", k=4, seed=0)
    seen_test = set()
    for fold in range(4):
        split = split_fold(sample_subjects, folds, fold, val_fraction=0.25, seed=0)
        train, val, test = (set(x) for x in (split.train_subjects, split.val_subjects, split.test_subjects))
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(SUBJECTS) and val
        assert {sample_subjects[i] for i in split.test} == test == {s for s, f in folds.items() if f == fold}
        assert sorted(split.train + split.val + split.test) == list(range(len(sample_subjects)))
        assert split == split_fold(sample_subjects, folds, fold, val_fraction=0.25, seed=0)
        seen_test |= test
    assert seen_test == set(SUBJECTS)  # every subject tested exactly once over the folds


def test_unknown_fold_is_named():
    with pytest.raises(ValueError, match="--data.fold 12 does not exist; folds are 0..11"):
        split_fold(SUBJECTS, loso_folds(SUBJECTS), 12)


def test_save_folds_round_trip(tmp_path):
    folds = loso_folds(SUBJECTS)
    save_folds(tmp_path / "x" / "folds.csv", folds)
    assert load_folds(tmp_path / "x" / "folds.csv") == folds
    assert (tmp_path / "x" / "folds.csv").read_text().splitlines()[:2] == ["subject,fold", "sub1,0"]
