"""Format writers: the trees look like the real datasets, quirks included, and the readers can read them."""
import numpy as np
import pandas as pd
import pytest

from common.data.readers import FrameFolder, ImageFile, VideoFile
from common.synth.formats import read_sheet_rows, real_annotations
from common.synth.formats.au import BP4D_AUS, DISFA_AUS, write_bp4d, write_disfa
from common.synth.formats.microexp import (CASME3_DEFAULT_ROWS, write_casme2, write_casme3, write_samm,
                                           write_smic)
from common.synth.formats.spotting import (CASME_SQ_DEFAULT_ROWS, SAMM_LV_DEFAULT_ROWS, write_casme2_lv,
                                           write_samm_lv)

ANNOTATIONS = real_annotations()
needs_real_sheets = pytest.mark.skipif(ANNOTATIONS is None, reason="public annotation sheets not found")


def assert_frames_cover(record, reader):
    """Every annotated frame number of a clip exists in its folder."""
    numbers = set(reader.numbers.tolist())
    interval = record.interval
    wanted = {interval.onset, interval.offset} | ({interval.apex} if interval.apex is not None else set())
    assert wanted <= numbers, (record.path, wanted - numbers)


def test_casme2_tree_sheet_and_missing_apex(tmp_path):
    written = write_casme2(tmp_path, subjects=2, per_subject=2, size=32)
    sheet = pd.read_excel(written.sheet)
    assert list(sheet.columns) == ["Subject", "Filename", "Unnamed: 2", "OnsetFrame", "ApexFrame", "OffsetFrame",
                                   "Unnamed: 6", "Action Units", "Estimated Emotion"]
    assert sheet["Subject"].tolist() == [1, 1, 2, 2] and "/" in sheet["ApexFrame"].astype(str).tolist()
    assert sum(r.interval.apex is None for r in written.records) == 1
    for record, row in zip(written.records, sheet.itertuples()):
        assert record.path == tmp_path / "CASME2_RAW_selected" / f"sub{row.Subject:02d}" / row.Filename
        reader = FrameFolder(record.path)
        assert reader.numbers[0] == row.OnsetFrame and reader.numbers[-1] == row.OffsetFrame
        assert reader.files[0].name == f"img{row.OnsetFrame}.jpg"
        cropped = tmp_path / "Cropped" / f"sub{row.Subject:02d}" / row.Filename
        assert (cropped / f"reg_img{row.OnsetFrame}.jpg").is_file()


def test_samm_header_below_free_text_and_grayscale_frames(tmp_path):
    written = write_samm(tmp_path, subjects=2, per_subject=2, size=32)
    raw = pd.read_excel(written.sheet, header=None)
    assert raw.iloc[12, 0] == "Subject" and raw.iloc[:12, 0].notna().any()
    sheet = pd.read_excel(written.sheet, header=12)
    assert {"Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion"} <= set(sheet.columns)
    assert -1 in sheet["Apex Frame"].tolist()
    for record, row in zip(written.records, sheet.itertuples()):
        assert record.subject == f"{row.Subject:03d}"
        assert record.path == tmp_path / "SAMM" / record.subject / row.Filename
        reader = FrameFolder(record.path)
        assert reader.files[0].name == f"{row.Subject:03d}_{reader.numbers[0]:05d}.jpg"
        assert_frames_cover(record, reader)
        frame = reader.read([0])[0]
        assert np.array_equal(frame[..., 0], frame[..., 2])  # stored gray, read as RGB


def test_smic_labels_are_folder_names(tmp_path):
    written = write_smic(tmp_path, subjects=2, per_subject=3, size=32)
    for record in written.records:
        label, name = record.path.parts[-2], record.path.name
        assert record.labels["emotion"] == label and record.path.parts[-3] == "micro"
        assert name.startswith(f"{record.subject}_") and record.interval.apex is None
        reader = FrameFolder(record.path)
        assert reader.files[0].suffix == ".bmp" and reader.numbers[0] == record.interval.onset
    assert (tmp_path / "HS" / "s1" / "non_micro").is_dir()
    assert len(written.records) == 6


def test_casme3_text_numbers_casing_gaps_and_repeated_filename(tmp_path):
    written = write_casme3(tmp_path, subjects=2, per_subject=3, size=32)
    rows = read_sheet_rows(written.sheet, "label")
    assert rows[0] == ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
    assert all(isinstance(v, str) for row in rows[1:] for v in row[2:5])  # numbers stored as text
    assert rows[1][0].startswith("spNO.") and written.records[0].path.parts[-3].startswith("spNo.")
    names = [(r.subject, r.path) for r in written.records]
    assert len(set(names)) < len(names)  # one video holds two rows
    gaps = 0
    for record in written.records:
        reader = FrameFolder(record.path)
        assert_frames_cover(record, reader)
        gaps += len(reader.gaps)
        assert (record.path.parent / "depth").is_dir()
    assert gaps > 0


def test_bp4d_occurrence_codes_and_images(tmp_path):
    written = write_bp4d(tmp_path, subjects=("F001", "M002"), tasks=("T1",), frames=5, size=32)
    table = pd.read_csv(tmp_path / "AUCoding" / "AU_OCC" / "F001_T1.csv")
    assert table.columns[0] == "0" and [int(c) for c in table.columns[1:]] == list(BP4D_AUS)
    assert set(np.unique(table.iloc[:, 1:].to_numpy())) <= {0, 1, 9} and (table.iloc[:, 1:] == 9).all(axis=1).any()
    first = written.records[0]
    assert first.labels["au_occ"] == {int(c): v for c, v in table.iloc[0, 1:].items()}
    assert ImageFile(first.path).read([0]).shape == (1, 32, 32, 3)
    images = sorted(p.stem for p in (tmp_path / "BP4D-training" / "F001" / "T1").glob("*.jpg"))
    assert len(images) == 6 and len(written.by_subject()["F001"]) == 5  # one image without a label row
    intensity = pd.read_csv(tmp_path / "AUCoding" / "AU_INT" / "AU06" / "F001_T1_AU06.csv", header=None)
    assert intensity[0].tolist() == table["0"].tolist()


def test_disfa_labels_count_from_one_video_from_zero(tmp_path):
    written = write_disfa(tmp_path, subjects=("SN001",), frames=8, size=32)
    labels = pd.read_csv(tmp_path / "ActionUnit_Labels" / "SN001" / "SN001_au12.txt", header=None)
    assert labels[0].tolist() == list(range(1, 9)) and labels[1].between(0, 5).all()
    assert len(list((tmp_path / "ActionUnit_Labels" / "SN001").glob("*.txt"))) == len(DISFA_AUS)
    video = VideoFile(tmp_path / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi")
    assert len(video) == 8
    record = written.records[3]
    assert record.interval.onset == 3 and record.extra["label_frame"] == 4
    assert record.labels["au_int"][12] == labels[1][3]


def test_casme2_long_video_sheet_without_header(tmp_path):
    written = write_casme2_lv(tmp_path, subjects=2, seconds=12, size=32)
    sheets = pd.read_excel(written.sheet, sheet_name=None, header=None)
    main = sheets["CASFEcode_final"]
    assert set(sheets) == {"CASFEcode_final", "naming rule1", "naming rule2"}
    assert len(main) == len(sheets["naming rule1"]) and (main[4] == 0).any()
    assert main[7].isin(["macro-expression", "micro-expression"]).all()
    for record in written.records:
        assert record.path.parent.name == record.subject and record.path.name.startswith(record.subject[1:] + "_")
        reader = FrameFolder(record.path)
        assert reader.files[0].name == "img1.jpg" and not reader.gaps
        for event in record.labels["events"]:
            assert event["interval"].offset <= reader.numbers[-1]


def test_samm_long_video_header_row_apex_and_fractions(tmp_path):
    written = write_samm_lv(tmp_path, subjects=2, seconds=4, size=32)
    sheet = pd.read_excel(written.sheet, header=9)
    assert list(sheet.columns[:6]) == ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset"]
    assert (sheet["Apex"] == -1).any() and (sheet["Onset"] % 1 != 0).any()
    for record in written.records:
        reader = FrameFolder(record.path)
        assert reader.files[0].name == f"{record.path.name}_0001.jpg"
        for event in record.labels["events"]:
            assert event["interval"].offset <= reader.numbers[-1]


def test_rendered_expression_shows_at_apex(tmp_path):
    written = write_casme2_lv(tmp_path, subjects=1, seconds=12, size=48)
    record = written.records[0]
    event = next(e for e in record.labels["events"] if e["type"] == "macro")
    reader = FrameFolder(record.path)
    onset, apex = reader.read_numbers([event["interval"].onset, event["interval"].apex]).astype(int)
    assert np.abs(apex - onset).mean() > 0.5
    assert np.array_equal(*reader.read_numbers([1, 2]))  # neutral frames are one cached image


# ---------------------------------------------------------------- the real public sheets


@needs_real_sheets
def test_casme3_rows_of_the_real_sheet_are_copied_cell_for_cell(tmp_path):
    source = ANNOTATIONS / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
    chosen = list(CASME3_DEFAULT_ROWS) + [128, 796]  # plus an apex before onset and an offset of 0
    written = write_casme3(tmp_path, sheet=source, rows=chosen, size=32)
    original = read_sheet_rows(source, "label")
    assert read_sheet_rows(written.sheet, "label") == [original[0]] + [original[r + 1] for r in chosen]
    usable = [r for r in written.records if r.interval is not None]
    assert len(usable) == len(CASME3_DEFAULT_ROWS)
    assert [p for r in written.records for p in r.problems] == ["apex 83 outside 112..358",
                                                                "offset 0 before onset 1812"]
    for record in usable:
        assert_frames_cover(record, FrameFolder(record.path))


@needs_real_sheets
def test_casme2_long_video_real_rows_keep_the_offset_zero_quirk(tmp_path):
    source = ANNOTATIONS / "CASME_sq_gt.xlsx"
    written = write_casme2_lv(tmp_path, sheet=source, size=32)
    original = read_sheet_rows(source, "CASFEcode_final")
    assert read_sheet_rows(written.sheet, "CASFEcode_final") == [original[r] for r in CASME_SQ_DEFAULT_ROWS]
    events = [e for r in written.records for e in r.labels["events"]]
    ends_at_apex = [e for e in events if "offset 0: ends at apex" in e["problems"]]
    assert len(ends_at_apex) == 1 and ends_at_apex[0]["interval"].offset == ends_at_apex[0]["interval"].apex
    assert {r.path.name for r in written.records} == {"15_0502funnyerrors", "16_0102eatingworms"}


@needs_real_sheets
def test_samm_long_video_real_rows_round_and_keep_missing_apex(tmp_path):
    source = ANNOTATIONS / "SAMMLV_gt.xlsx"
    written = write_samm_lv(tmp_path, sheet=source, size=32)
    original = read_sheet_rows(source, "FACS_Movement_Only")
    expected = original[:10] + [original[10 + r] for r in SAMM_LV_DEFAULT_ROWS]  # free text, header, rows
    copied = read_sheet_rows(written.sheet, "FACS_Movement_Only")
    assert copied == [[pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for v in row]  # xlsx keeps
                      for row in expected]  # 15 significant digits of 102.80000000000018
    assert pd.read_excel(written.sheet, header=9)["Filename"].tolist() == ["007_3_1", "009_7_1", "010_1_3"]
    events = {r.path.name: r.labels["events"][0] for r in written.records}
    assert events["009_7"]["interval"].onset == 103 and events["009_7"]["interval"].apex == 159
    assert events["010_1"]["interval"].apex is None
    assert len(FrameFolder(tmp_path / "SAMM_longvideos" / "007_3")) == 291 + 10
