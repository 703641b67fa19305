"""Micro-expression loaders against trees written in the real formats, the MEGC2019 composite against its
official list, class schemes as data, and subject folds that never leak the held-out subject."""
from __future__ import annotations

import csv
from collections import Counter

import pytest

from common.data import load_samples
from common.data.sheets import AnnotationError, MissingImageError
from common.synth.formats import real_annotations, write_xlsx
from common.synth.formats.microexp import CASME2_SHEET, write_casme2, write_casme3, write_samm, write_smic
from microexp.data import MicroExpDataModule
from tests.conftest import megc_roots

ANNOTATIONS = real_annotations()
needs_real_sheets = pytest.mark.skipif(ANNOTATIONS is None, reason="public annotation sheets not found")
WRITERS = {
    "casme2": lambda root: write_casme2(root, subjects=2, per_subject=4, size=32),
    "samm": lambda root: write_samm(root, subjects=2, per_subject=4, size=32),
    "smic": lambda root: write_smic(root, subjects=3, per_subject=3, size=32),
    "casme3": lambda root: write_casme3(root, subjects=2, per_subject=4, size=32),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("microexp")
    return {name: write(base / name) for name, write in WRITERS.items()}


@pytest.mark.parametrize("name", list(WRITERS))
def test_loader_finds_every_usable_row_with_its_quirks_resolved(trees, name):
    written = trees[name]
    samples = load_samples(name, written.root, task="microexp")
    usable = [r for r in written.records if r.interval is not None]
    found = {(s.path, s.interval): s for s in samples}
    assert sorted(found, key=str) == sorted(((r.path, r.interval) for r in usable), key=str)
    for record in usable:
        sample = found[(record.path, record.interval)]
        assert sample.subject == record.subject and sample.labels["emotion"] == str(record.labels["emotion"]).lower()
    if name in ("casme2", "samm"):
        assert any(s.interval.apex is None for s in samples), "the '/' or -1 apex must read as no apex"
    if name == "casme3":
        assert len({s.path for s in samples}) < len(samples), "a repeated Filename gives samples of one video"


@needs_real_sheets
def test_casme3_real_sheet_rows_and_its_unusable_rows(tmp_path):
    rows = (0, 1, 2, 129, 128, 796)  # data rows of the real sheet; 128 and 796 are unusable (apex, offset 0)
    written = write_casme3(tmp_path, sheet=ANNOTATIONS / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", rows=rows, size=32)
    samples = load_samples("casme3", written.root, task="microexp")
    assert sorted((s.path, s.interval) for s in samples) == \
        sorted((r.path, r.interval) for r in written.records if r.interval is not None)
    assert len(samples) == len(rows) - sum(bool(r.problems) for r in written.records) == 4


def test_casme3_sheets_are_found_under_their_release_names(tmp_path):
    from openpyxl import load_workbook

    written = write_casme3(tmp_path / "a", subjects=1, per_subject=2, size=24)
    expected = sorted(((r.path, r.interval) for r in written.records), key=str)
    sheet = written.sheet
    assert sheet.name == "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx" and sheet.parent.name == "annotation"
    # the public repository's annotation/partA/, another case
    (sheet.parent / "partA").mkdir()
    sheet.rename(sheet.parent / "partA" / "CAS(ME)3_PART_A_ME_LABEL_JPGINDEX_V2.XLSX")
    assert sorted(((s.path, s.interval) for s in load_samples("casme3", written.root, task="microexp")), key=str) == expected
    # v1 kept its rows in `Sheet1`; an .xlsx re-save of it in the root
    book = load_workbook(sheet.parent / "partA" / "CAS(ME)3_PART_A_ME_LABEL_JPGINDEX_V2.XLSX")
    book["label"].title = "Sheet1"
    (sheet.parent / "partA" / "CAS(ME)3_PART_A_ME_LABEL_JPGINDEX_V2.XLSX").unlink()
    book.save(written.root / "cas(me)3_part_A_ME_label_JpgIndex_v1.xlsx")
    assert sorted(((s.path, s.interval) for s in load_samples("casme3", written.root, task="microexp")), key=str) == expected
    # a name no release uses is not taken
    (written.root / "cas(me)3_part_A_ME_label_JpgIndex_v1.xlsx").rename(written.root / "casme3_partA_labels.xlsx")
    with pytest.raises(FileNotFoundError, match=r"cas\(me\)3_part_A_ME_label_JpgIndex_v2.xlsx.*annotation/partA/"):
        load_samples("casme3", written.root, task="microexp")


@pytest.mark.filterwarnings("ignore::common.data.readers.DamagedFrameWarning")
def test_a_damaged_casme3_frame_is_counted_and_read_around(tmp_path, capsys):
    import json

    import numpy as np

    from common.inspect import main as inspect_main

    written = write_casme3(tmp_path, subjects=2, per_subject=2, size=24)
    record = next(r for r in written.records if r.interval is not None)
    apex = record.path / f"{record.interval.apex}.jpg"
    apex.write_bytes(apex.read_bytes()[:100])  # as CAS(ME)³'s damaged files: present, not decodable
    assert inspect_main(["--json", "--task", "microexp", "--dataset", "casme3", "--root", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames_damaged"] == 1 and report["damaged"] == [str(apex)] and report["unreadable"] == []
    data = MicroExpDataModule("casme3", root=str(tmp_path), scheme="casme3_7", fold=0, val_fraction=0,
                              image_size=24, clip_length=4, num_workers=0)
    data.setup("fit")
    data.setup("test")
    items = [part[i] for part in (data.train_set, data.test_set) for i in range(len(part))]
    assert len(items) == sum(r.interval is not None for r in written.records)
    assert all(np.isfinite(item["input"].float().numpy()).all() for item in items)


def test_the_composite_is_the_official_list(megc):
    written, gt = megc
    data = MicroExpDataModule("megc2019", root=megc_roots(written), fold=0, image_size=24, clip_length=4,
                              num_workers=0)
    data.setup("fit")
    items = [part[i] for part in (data.train_set, data.val_set, data.test_set) for i in range(len(part))]
    by_dataset = Counter(item["dataset"] for item in items)
    assert by_dataset == {"smic": 164, "casme2": 145, "samm": 133} and len(items) == 442
    subjects = Counter(item["subject"].split("/")[0] for item in {i["subject"]: i for i in items}.values())
    assert subjects == {"smic": 16, "casme2": 24, "samm": 28}
    official = {tuple(row) for row in csv.reader(gt.open())}
    ours = {(item["dataset"], *megc_identity(item), str(item["target"])) for item in items}
    assert ours == official


def megc_identity(item) -> tuple[str, str]:
    """(subject, video) as the MEGC2019 list spells them: SAMM subjects unpadded, SMIC s01 where folders say s1."""
    dataset, subject = item["subject"].split("/", 1)
    video = item["sample"].split("/", 1)[1]
    if dataset == "samm":
        return str(int(subject)), video
    if dataset == "smic":
        padded = f"s{int(subject[1:]):02d}"
        return padded, video.replace(subject + "_", padded + "_", 1)
    return subject, video


def test_schemes_decide_which_clips_count(trees):
    roots = {"root": str(trees["casme2"].root), "image_size": 24, "clip_length": 4, "num_workers": 0, "fold": 0,
             "val_fraction": 0}
    words = Counter(str(r.labels["emotion"]).lower() for r in trees["casme2"].records)
    for scheme, kept in (("casme2_5", {"happiness", "disgust", "repression", "surprise", "others"}),
                         ("casme2_7", set(words)), ("megc2019", {"happiness", "disgust", "repression", "surprise"})):
        data = MicroExpDataModule("casme2", scheme=scheme, **roots)
        data.setup("fit")
        total = len(data.train_set) + len(data.test_set)
        assert total == sum(n for w, n in words.items() if w in kept), scheme
    four = MicroExpDataModule("casme2", scheme="megc4", **roots)
    assert four.class_names == ["others", "positive", "surprise", "negative"]
    with pytest.raises(KeyError, match="smic_3"):
        MicroExpDataModule("casme2", scheme="smic_3", root="x")


def test_a_fold_tests_only_its_subject_and_validates_on_training_subjects(megc):
    written, _ = megc
    for fold in (0, 30):
        data = MicroExpDataModule("megc2019", root=megc_roots(written), fold=fold, image_size=24, clip_length=4,
                                  num_workers=0, val_fraction=0.2)
        data.setup("fit")
        subjects = {name: {part.subjects[i] for part in sets(getattr(data, name)) for i in range(len(part))}
                    for name in ("train_set", "val_set", "test_set")}
        assert len(subjects["test_set"]) == 1
        assert not (subjects["test_set"] & (subjects["train_set"] | subjects["val_set"]))
        assert not (subjects["train_set"] & subjects["val_set"]) and subjects["val_set"]


def sets(dataset):
    return getattr(dataset, "datasets", [dataset])


def test_leave_one_dataset_out(megc):
    written, _ = megc
    data = MicroExpDataModule("megc2019", root=megc_roots(written), fold=1, fold_scheme="lodo", image_size=24,
                              clip_length=4, num_workers=0, val_fraction=0.1)
    data.setup("fit")
    test = {part.frames.samples[0].dataset for part in sets(data.test_set)}
    train = {part.frames.samples[0].dataset for part in sets(data.train_set)}
    assert test == {"samm"} and train == {"casme2", "smic"}  # folds in dataset name order


def test_bad_rows_name_the_sheet_and_row(tmp_path):
    written = write_casme2(tmp_path / "c", subjects=1, per_subject=2, size=24)
    header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
              "Estimated Emotion"]
    write_xlsx(written.sheet, {"Sheet1": [header, [1, "EP_missing", 1, 5, 6, 7, None, "4", "happiness"]]})
    with pytest.raises(MissingImageError, match=r"row 2.*EP_missing"):
        load_samples("casme2", written.root, task="microexp")
    write_xlsx(written.sheet, {"Sheet1": [header, [1, written.records[0].path.name, 1, "five", 6, 7, None, "4", "x"]]})
    with pytest.raises(AnnotationError, match=rf"{CASME2_SHEET}.*row 2: OnsetFrame 'five'"):
        load_samples("casme2", written.root, task="microexp")


def test_real_data_needs_a_fold_and_joint_roots_by_name(trees):
    with pytest.raises(ValueError, match="--data.fold"):
        MicroExpDataModule("smic", root=str(trees["smic"].root), num_workers=0).setup("fit")
    with pytest.raises(ValueError, match="samm: DIR"):
        MicroExpDataModule("megc2019", root={"casme2": "a", "smic": "b"})


def test_one_head_per_dataset_keeps_each_dataset_in_its_own_classes(trees):
    roots = {"casme2": str(trees["casme2"].root), "smic": str(trees["smic"].root)}
    data = MicroExpDataModule("casme2+smic", root=roots, heads="per_dataset", fold=0, image_size=24, clip_length=4,
                              num_workers=0, val_fraction=0)
    data.setup("fit")
    assert data.class_groups == {"casme2": [0, 5], "smic": [5, 8]}
    assert data.class_names[:5] == [f"casme2:{c}" for c in ("happiness", "disgust", "repression", "surprise", "others")]
    assert data.class_names[5:] == ["smic:negative", "smic:positive", "smic:surprise"]
    for part in (data.train_set, data.test_set):
        for i in range(len(part)):
            item = part.identity(i) if hasattr(part, "identity") else part[i]
            start, end = data.class_groups[item["dataset"]]
            assert start <= item["target"] < end
    chosen = MicroExpDataModule("casme2+smic", root=roots, heads="per_dataset", scheme={"casme2": "casme2_7"})
    assert chosen.class_groups == {"casme2": [0, 7], "smic": [7, 10]}
    with pytest.raises(ValueError, match="per_dataset"):
        MicroExpDataModule("casme2+smic", root=roots, scheme={"casme2": "casme2_7"})
