"""Spotting loaders on real-format fixtures and the real sheets, the motion features, post-processing, baseline."""
import json

import cv2
import numpy as np
import pytest

from common.data import load_samples
from common.data.readers import FrameFolder
from common.inspect import main as inspect_main
from common.synth import long_video
from common.synth.formats import read_sheet_rows, write_xlsx
from common.synth.formats.spotting import write_casme2_lv, write_casme3_lv, write_samm_lv
from common.synth.formats import real_annotations
from spotting import features as features_module
from spotting.baseline import ThresholdSpotter
from spotting.data import frame_positions, frame_targets
from spotting.evaluate import main as evaluate_main
from spotting.features import FeatureCache, FeatureSettings, FlowFeatures, extract
from spotting.postprocess import SCORE_NAMES, SpotSettings, nms, Interval, spot

ANNOTATIONS = real_annotations()
needs_real_sheets = pytest.mark.skipif(ANNOTATIONS is None, reason="public annotation sheets not found")


def events_of(samples):
    return {s.path: [(e["interval"], e["type"]) for e in s.labels["events"]] for s in samples}


@pytest.mark.parametrize("dataset, writer", [("casme_sq", write_casme2_lv), ("samm_lv", write_samm_lv),
                                             ("casme3_lv", write_casme3_lv)])
def test_loaders_read_the_fixture_videos_as_written(tmp_path, dataset, writer):
    written = writer(tmp_path, subjects=2, size=32)
    samples = load_samples(dataset, tmp_path, task="spotting")
    assert events_of(samples) == {r.path: [(e["interval"], e["type"]) for e in r.labels["events"]]
                                  for r in written.records}
    assert {s.subject for s in samples} == {r.subject for r in written.records}
    for sample in samples:
        assert FrameFolder(sample.path).numbers[0] == 1 and sample.extra["vid"] and sample.fps > 0


@pytest.mark.filterwarnings("ignore::common.data.readers.DamagedFrameWarning")
def test_a_long_video_with_a_damaged_frame_is_counted_and_read_whole(tmp_path, capsys):
    written = write_casme3_lv(tmp_path, subjects=1, size=32, seconds=4)
    video = written.records[0].path
    (video / "20.jpg").write_bytes(b"")
    assert inspect_main(["--task", "spotting", "--dataset", "casme3_lv", "--root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames_damaged"] == 1
    sample = load_samples("casme3_lv", tmp_path, task="spotting")[0]
    features = FeatureCache(None, FeatureSettings(size=32, detector="none")).video(sample)
    assert len(features.features) == len(FrameFolder(video).numbers) and np.isfinite(features.features).all()


def test_casme_sq_offset_zero_ends_at_apex_and_folders_match_by_prefix(tmp_path):
    write_casme2_lv(tmp_path, subjects=1, size=32)
    main = read_sheet_rows(tmp_path / "CAS(ME)^2code_final.xlsx", "CASFEcode_final")
    coded_zero = next(row for row in main if row[4] == 0)
    sample = load_samples("casme_sq", tmp_path, task="spotting")[0]
    event = next(e for e in sample.labels["events"] if e["interval"].onset == coded_zero[2])
    assert event["interval"].offset == event["interval"].apex == coded_zero[3]
    assert sample.path.name.startswith(sample.extra["vid"]) and len(sample.path.name) > len(sample.extra["vid"])


def test_samm_lv_rounds_fractions_and_keeps_a_missing_apex(tmp_path):
    written = write_samm_lv(tmp_path, subjects=2, size=32)
    rows = read_sheet_rows(written.sheet, "FACS_Movement_Only")[10:]
    assert rows[0][3] % 1 and rows[1][4] == -1  # a fractional onset, an apex of -1
    events = [e for s in load_samples("samm_lv", tmp_path, task="spotting") for e in s.labels["events"]]
    assert events[0]["interval"].onset == int(rows[0][3] + 0.5) and events[0]["interval"].apex == rows[0][4]
    assert events[1]["interval"].apex is None and events[1]["interval"].onset == rows[1][3]


def test_a_bad_cell_names_file_sheet_and_row(tmp_path):
    write_samm_lv(tmp_path, subjects=1, size=32)
    sheet = tmp_path / "SAMM_LongVideos_V3_Release.xlsx"
    rows = read_sheet_rows(sheet, "FACS_Movement_Only")
    rows[10][3] = "soon"
    write_xlsx(sheet, {"FACS_Movement_Only": rows})
    with pytest.raises(ValueError, match=r"SAMM_LongVideos_V3_Release.xlsx.*row 11.*Onset 'soon'"):
        load_samples("samm_lv", tmp_path, task="spotting")


@needs_real_sheets
@pytest.mark.parametrize("dataset, sheet, macro, micro, videos", [
    ("casme_sq", "CASME_sq_gt.xlsx", 300, 57, None), ("samm_lv", "SAMMLV_gt.xlsx", 343, 159, 147)])
def test_inspect_counts_the_real_sheets(tmp_path, capsys, dataset, sheet, macro, micro, videos):
    (tmp_path / sheet).write_bytes((ANNOTATIONS / sheet).read_bytes())
    assert inspect_main(["--task", "spotting", "--dataset", dataset, "--root", str(tmp_path), "--no-media", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == {"macro": macro, "micro": micro}
    assert (report["macro"], report["micro"]) == (macro, micro)
    if videos is not None:
        assert report["videos"] == report["samples"] == videos


@needs_real_sheets
def test_casme3_long_videos_from_the_real_xls(tmp_path):
    import xlrd

    (tmp_path / "annotation").mkdir()
    (tmp_path / "annotation" / "CAS(ME)3_part_A_v2.xls").write_bytes((ANNOTATIONS / "CAS(ME)3_part_A_v2.xls").read_bytes())
    samples = load_samples("casme3_lv", tmp_path, task="spotting")
    table = xlrd.open_workbook(str(ANNOTATIONS / "CAS(ME)3_part_A_v2.xls")).sheet_by_name("AU+Emotion")
    kinds = [str(table.cell_value(r, 6)).lower() for r in range(1, table.nrows)]
    videos = {(table.cell_value(r, 0), table.cell_value(r, 1)) for r in range(1, table.nrows)}
    found = [e["type"] for s in samples for e in s.labels["events"]]
    assert found.count("micro") == sum(k.startswith("micro") for k in kinds)
    assert found.count("macro") == sum(k.startswith("macro") for k in kinds)
    assert len(samples) == len(videos)


@needs_real_sheets
def test_real_casme_sq_rows_find_their_frame_folders(tmp_path):
    written = write_casme2_lv(tmp_path, sheet=ANNOTATIONS / "CASME_sq_gt.xlsx", size=32)
    samples = load_samples("casme_sq", tmp_path, task="spotting")
    assert sorted(s.path for s in samples) == sorted(r.path for r in written.records)


def test_evaluate_reads_ground_truth_from_a_dataset(tmp_path, capsys):
    write_samm_lv(tmp_path, subjects=1, size=32)
    samples = load_samples("samm_lv", tmp_path, task="spotting")
    lines = ["vid,onset,offset,type"] + [f"{s.extra['vid']},{e['interval'].onset},{e['interval'].offset},"
                                         f"{'me' if e['type'] == 'micro' else 'mae'}"
                                         for s in samples for e in s.labels["events"]][:1]
    (tmp_path / "pred.csv").write_text("\n".join(lines) + "\n")
    assert evaluate_main(["--gt-dataset", "samm_lv", "--gt-root", str(tmp_path), "--pred", str(tmp_path / "pred.csv"),
                          "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    total = sum(len(s.labels["events"]) for s in samples)
    assert scores["overall"]["hits"] == 1 and scores["overall"]["gt"] == total and scores["overall"]["precision"] == 1


# ---------------------------------------------------------------- features


def test_head_motion_is_removed_and_facial_motion_kept():
    settings = FeatureSettings(detector="none")
    maker = FlowFeatures(settings)
    names = settings.names()
    magnitude = [i for i, n in enumerate(names) if n.endswith("_mag")]
    video = long_video(4, 0, fps=30.0, seconds=20.0, size=settings.size)
    grey = lambda i: cv2.cvtColor(video.frame(i), cv2.COLOR_RGB2GRAY)  # noqa: E731
    event = next(e for e in video.events if e.kind == "macro")
    neutral = grey(event.onset - 5)
    moved = maker.pooled(maker.flow(neutral, np.roll(neutral, (2, 3), axis=(0, 1))))  # the head: 3 px right, 2 down
    assert moved[names.index("nose_root_dx")] * maker.iod == pytest.approx(3, abs=0.6)
    assert moved[names.index("nose_root_dy")] * maker.iod == pytest.approx(2, abs=0.6)
    assert moved[magnitude].max() * maker.iod < 0.5  # of 3.6 px, what is left in the regions
    rising = maker.pooled(maker.flow(grey(event.onset - 3), grey((event.onset + event.apex) // 2 + 1)))
    still = [maker.pooled(maker.flow(grey(i - 3), grey(i)))[magnitude].max()
             for i in range(event.onset - 30, event.onset - 20)]
    assert rising[magnitude].max() > 2 * np.median(still)


def test_features_follow_the_planted_events_and_come_from_the_cache(tmp_path, monkeypatch):
    settings = FeatureSettings(detector="none")
    video = long_video(2, 1, fps=30.0, seconds=12.0, size=settings.size)
    read = lambda positions: np.stack([video.frame(int(p)) for p in positions])  # noqa: E731
    value = extract(read, np.arange(len(video)), video.fps, settings, chunk=50)
    assert value.features.shape == (len(video), settings.dim) and value.k == 3 and value.step == 1
    magnitude = value.features[:, 2:3 * (len(settings.regions) - 1):3].max(1)
    inside = np.zeros(len(video), bool)
    for e in video.events:
        inside[e.onset:e.offset + 4] = True
    background = np.median(magnitude[~inside])
    assert all(magnitude[e.onset:e.offset + 4].max() > 2 * background for e in video.events)
    # the same in one chunk: chunking does not change a value
    assert np.allclose(extract(read, np.arange(len(video)), video.fps, settings, chunk=1000).features, value.features)

    cache = FeatureCache(tmp_path, settings)
    key = cache.key("synthetic/2@1", len(video), video.fps)
    cache.save(key, value)
    monkeypatch.setattr(features_module, "extract", lambda *a, **k: pytest.fail("recomputed"))
    assert np.array_equal(cache.load(key).features, value.features)
    assert cache.key("synthetic/2@1", len(video), 25.0) != key
    assert FeatureCache(tmp_path, FeatureSettings(detector="none", k=5)).key("synthetic/2@1", len(video), video.fps) != key


def test_fast_videos_are_subsampled_and_keep_their_frame_numbers():
    settings = FeatureSettings(detector="none")
    assert settings.step(200.0) == 7 and settings.gap(200.0) == 3 and settings.step(30.0) == 1
    frames = np.zeros((60, 64, 64, 3), np.uint8)
    numbers = np.arange(101, 161)
    value = extract(lambda p: frames[np.asarray(p)], numbers, 200.0, settings)
    assert value.numbers.tolist() == numbers[::7].tolist() and value.fps == pytest.approx(200 / 7)
    with pytest.raises(ValueError, match="regions"):
        FeatureSettings(regions=("nose_root", "ear"))


def test_targets_mark_each_event_at_its_feature_frames():
    numbers = np.arange(0, 70, 7)  # a 200 fps video subsampled by 7
    from common.data.records import Interval as Annotated

    targets = frame_targets(numbers, [{"interval": Annotated(15, 20, 40), "type": "micro"}])
    assert frame_positions(numbers, [15, 40]).tolist() == [2, 5]
    action = targets[:, SCORE_NAMES.index("micro_action")]
    assert action.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert targets[:, SCORE_NAMES.index("micro_start")].argmax() == 2
    assert targets[:, SCORE_NAMES.index("micro_end")].argmax() == 5
    assert targets[:, :3].max() == 0  # nothing macro


# ---------------------------------------------------------------- post-processing and baseline


def scores_with(events, length=200):
    scores = np.zeros((length, len(SCORE_NAMES)), np.float32)
    for kind, onset, offset, height in events:
        base = 3 * ("macro", "micro").index(kind)
        apex = (onset + offset) // 2
        t = np.arange(length)
        scores[:, base] = np.maximum(scores[:, base], height * np.exp(-0.5 * ((t - apex) / ((offset - onset) / 3)) ** 2))
        scores[onset, base + 1] = scores[offset, base + 2] = 0.9
    return scores


def test_spot_finds_intervals_in_frame_numbers():
    scores = scores_with([("micro", 40, 48, 0.8), ("macro", 100, 140, 0.9), ("micro", 170, 176, 0.3)])
    settings = SpotSettings({"macro": 0.5, "micro": 0.5}, {"micro": (3, 15), "macro": (16, 135)})
    found = spot(scores, np.arange(1000, 1200), settings)
    assert [(i.type, i.onset, i.offset) for i in found] == [("micro", 1040, 1048), ("macro", 1100, 1140)]
    assert found[0].apex == 1044
    # the plausible length range drops what does not fit
    strict = SpotSettings({"macro": 0.5, "micro": 0.5}, {"micro": (3, 5), "macro": (16, 135)})
    assert [i.type for i in spot(scores, np.arange(200), strict)] == ["macro"]
    # subsampled: an offset covers the source frames up to the next kept one
    free = SpotSettings({"macro": 0.5, "micro": 0.5}, {})
    assert spot(scores, np.arange(0, 1400, 7), free, step=7)[0].offset == 48 * 7 + 6


def test_nms_keeps_the_higher_of_two_overlapping_intervals():
    a, b, c = Interval(10, 15, 20, "micro", 0.9), Interval(11, 15, 21, "micro", 0.5), Interval(30, 32, 35, "micro", 0.4)
    assert nms([b, a, c]) == [a, c]


def test_baseline_spots_a_planted_motion_burst():
    regions = 12
    features = np.random.default_rng(0).uniform(0, 0.01, (300, 3 * (regions - 1) + 2)).astype(np.float32)
    features[150:156, 2:33:3] += 0.2
    spotter = ThresholdSpotter(regions, {"macro": 0.9, "micro": 0.5})
    micro = [i for i in spotter.spot(features, np.arange(300), 30.0) if i.type == "micro"]
    assert len(micro) == 1 and micro[0].onset <= 152 <= micro[0].offset


def test_a_loso_fold_of_a_real_format_dataset_tests_one_unseen_subject(tmp_path):
    from spotting.data import SpottingDataModule

    write_casme2_lv(tmp_path / "casme_sq", subjects=4, size=32, seconds=8)
    data = SpottingDataModule("casme_sq", root=str(tmp_path / "casme_sq"), fold=1, detector="none",
                              feature_cache=str(tmp_path / "cache"), val_fraction=0.3, window=64)
    data.setup("fit")
    subjects = lambda videos: {v.subject for v in videos}  # noqa: E731
    assert len(subjects(data.test_videos)) == 1
    assert not subjects(data.test_videos) & (subjects(data.train_videos) | subjects(data.val_videos))
    assert data.val_videos and not subjects(data.val_videos) & subjects(data.train_videos)
    assert all(v.value.features.shape[1] == data.feature_dim for v in data.train_videos)
    with pytest.raises(ValueError, match="--data.fold"):
        SpottingDataModule("casme_sq", root=str(tmp_path / "casme_sq"), feature_cache=None).setup("fit")


def test_pooled_folds_score_every_video_once(tmp_path):
    from spotting.evaluate import pool_folds

    for fold, (truth, guess) in enumerate([((10, 20), (10, 20)), ((30, 40), (50, 60))]):
        folder = tmp_path / f"fold{fold}"
        folder.mkdir()
        (folder / "ground_truth.csv").write_text(f"vid,onset,offset,type\nv{fold},{truth[0]},{truth[1]},me\n")
        (folder / "predictions.csv").write_text(f"vid,onset,offset,type,score\nv{fold},{guess[0]},{guess[1]},me,0.9\n")
    results, lines = pool_folds([tmp_path / "fold0", tmp_path / "fold1"], tmp_path / "pooled")
    scores = json.loads((tmp_path / "pooled" / "scores.json").read_text())["learned"]
    assert results["learned"] == scores
    assert (scores["micro"]["hits"], scores["micro"]["gt"], scores["micro"]["pred"]) == (1, 2, 2)
    assert lines[0] == "learned:" and len((tmp_path / "pooled" / "predictions.csv").read_text().splitlines()) == 3
