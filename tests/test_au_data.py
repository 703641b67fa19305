"""Action-unit loaders against trees written in the real BP4D and DISFA formats."""
from __future__ import annotations

import pytest

from common.data import load_samples
from common.data.sheets import AnnotationError
from common.synth.formats.au import write_bp4d, write_disfa


def test_bp4d_rows_with_their_unknown_codes_and_intensities(tmp_path):
    written = write_bp4d(tmp_path / "bp4d")
    samples = load_samples("bp4d", written.root, task="au")
    expected = {r.path: r for r in written.records}
    assert sorted(s.path for s in samples) == sorted(expected), "every label row, and no image without one"
    for sample in samples:
        record = expected[sample.path]
        assert sample.subject == record.subject and sample.extra["sequence"] == record.extra["sequence"]
        assert sample.labels["au_occ"] == record.labels["au_occ"] and sample.labels["au_int"] == record.labels["au_int"]
    assert any(set(s.labels["au_occ"].values()) == {9} for s in samples), "an all-unknown frame is kept as it is"


def test_disfa_label_frame_k_is_video_frame_k_minus_1(tmp_path):
    written = write_disfa(tmp_path / "disfa")
    samples = load_samples("disfa", written.root, task="au")
    assert [(s.subject, s.interval, s.labels["au_int"]) for s in samples] == \
           [(r.subject, r.interval, r.labels["au_int"]) for r in written.records]
    assert all(s.extra["label_frame"] == s.interval.onset + 1 for s in samples)


def test_a_disfa_label_file_shorter_than_its_video_names_both(tmp_path):
    written = write_disfa(tmp_path / "disfa", subjects=("SN003",))
    for au in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26):
        path = written.root / "ActionUnit_Labels" / "SN003" / f"SN003_au{au}.txt"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(AnnotationError, match=r"SN003_au1.txt labels 11 frames but .*LeftVideoSN003_comp.avi holds 12"):
        load_samples("disfa", written.root, task="au")


def test_a_bad_occurrence_code_names_the_sheet_and_line(tmp_path):
    written = write_bp4d(tmp_path / "bp4d", subjects=("F001",), tasks=("T1",))
    sheet = written.root / "AUCoding" / "AU_OCC" / "F001_T1.csv"
    lines = sheet.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:-1] + ["3"])
    sheet.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"F001_T1.csv, line 3: occurrence codes must be 0, 1 or 9"):
        load_samples("bp4d", written.root, task="au")


def test_masks_left_out_frames_and_the_joint_union(tmp_path, caplog):
    import logging

    import numpy as np

    from au.data import AUDataModule, label_vectors

    bp4d = write_bp4d(tmp_path / "bp4d", subjects=("F001", "M011", "F007"), tasks=("T1",), frames=5, size=32)
    disfa = write_disfa(tmp_path / "disfa", subjects=("SN002", "SN013", "SN003"), frames=6, size=32)
    sample = load_samples("bp4d", bp4d.root, task="au")[0]
    occurrence, mask, intensity, int_mask = label_vectors(sample, [1, 6, 11, 25], threshold=2)
    codes = sample.labels["au_occ"]
    assert list(mask) == [codes[1] != 9, codes[6] != 9, codes[11] != 9, False]  # BP4D does not code AU25
    assert int_mask[1] == (sample.labels["au_int"][6] != 9) and not int_mask[0]
    disfa_sample = load_samples("disfa", disfa.root, task="au")[0]
    occurrence, mask, intensity, _ = label_vectors(disfa_sample, [1, 7], threshold=2)
    assert list(mask) == [True, False] and occurrence[0] == float(intensity[0] >= 2)

    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            data = AUDataModule("bp4d+disfa", root={"bp4d": str(bp4d.root), "disfa": str(disfa.root)}, fold=1,
                                image_size=32, num_workers=0, val_fraction=0)
            data.setup("fit")
    finally:
        rank_zero.removeHandler(caplog.handler)
    all_unknown = sum(set(r.labels["au_occ"].values()) == {9} for r in bp4d.records)
    assert f"left out {all_unknown} samples ({all_unknown} no coded AU in the set)" in caplog.text
    test_subjects = {item for part in data.test_set.datasets for item in part.subjects}
    assert test_subjects == {"bp4d/M011", "disfa/SN013"}, "fold 1 tests on part 2 of both protocols"
    item = data.train_set[0]
    assert item["target"].shape == item["mask"].shape == (17,) and np.isin(item["target"].numpy(), (0, 1)).all()
