"""Cache round trip, refusal of other settings, resume after a failure, a crash and a real Ctrl-C."""
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from common.data import load_samples, register_dataset
from common.data.align import AlignSettings
from common.data.cache import (SHARD_DIR, VERIFIED_FILE, CacheCorruptError, CacheError, CacheIncompleteError,
                               CacheMismatchError, FrameCache, FrameSettings, RawFrames, open_source, verify_cache)
from common.data.clips import clip_positions
from common.data.records import Interval, Sample, sample_from_dict, sample_key, sample_to_dict
from common.prepare import main as prepare_main
from common.prepare import prepare
from common.synth import render_face
from common.synth.formats import write_avi, write_image
from common.synth.formats.microexp import write_casme3

REPO = Path(__file__).resolve().parents[1]
SETTINGS = FrameSettings(AlignSettings(size=32, margin=0.1), span="interval", context=1)
DATASET = "toy_cache_test"


def toy_samples(root: Path) -> list[Sample]:
    """CAS(ME)³-like clips with gaps, one whole video, one image with a dataset face box."""
    samples = []
    for i, folder in enumerate(sorted((root / "data").glob("*/*/color"))):
        numbers = sorted(int(p.stem) for p in folder.glob("*.jpg"))
        onset, offset = numbers[1], numbers[-2]
        samples.append(Sample(DATASET, folder.parts[-3], "frames", folder,
                              interval=Interval(onset, None, offset),
                              labels={"emotion": i % 3, "au": np.linspace(0, 1, 5, dtype=np.float32)},
                              label_mask={"au": np.array([1, 1, 0, 1, 0], dtype=bool)}))
    samples.append(Sample(DATASET, "spNO.9", "video", root / "video.avi", labels={"events": [[3, 5, 8]]},
                          extra={"fps": 30}))
    samples.append(Sample(DATASET, "spNO.9", "image", root / "still.jpg", labels={"emotion": 1},
                          extra={"face_box": [8, 10, 40, 40]}))
    return samples


register_dataset(DATASET, task="microexp")(toy_samples)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_casme3(root, subjects=2, per_subject=3, size=48)
    write_avi(root / "video.avi", np.stack([render_face({12: k / 12}, 5, size=48, seed=1) for k in range(12)]), 30)
    write_image(root / "still.jpg", render_face({}, 6, size=64, seed=2))
    return root


@pytest.fixture(scope="module")
def clean_cache(toy_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "cache"
    report = prepare(toy_samples(toy_root), out, toy_root, "microexp", DATASET, SETTINGS, workers=0, progress=False)
    assert report.complete and report.written == len(toy_samples(toy_root))
    return out


def assert_same_cache(a: FrameCache, b: FrameCache) -> None:
    assert [s.path for s in a.samples] == [s.path for s in b.samples]
    for i in range(len(a)):
        assert np.array_equal(a.frame_numbers(i), b.frame_numbers(i))
        assert np.array_equal(a.frames(i), b.frames(i)), a.samples[i].path


def test_round_trip_matches_reading_the_raw_data(toy_root, clean_cache):
    cache, raw = FrameCache(clean_cache), RawFrames(toy_samples(toy_root), SETTINGS)
    assert len(cache) == len(raw) == 6
    for i, (cached, original) in enumerate(zip(cache.samples, raw.samples)):
        assert cached.key == original.key and cached.interval == original.interval
        if "au" in original.labels:  # arrays come back as arrays of the same dtype
            assert cached.labels["au"].dtype == np.float32
            assert np.array_equal(cached.label_mask["au"], original.label_mask["au"])
        assert cached.labels.keys() == original.labels.keys()
        numbers = cache.frame_numbers(i)
        assert np.array_equal(numbers, raw.frame_numbers(i))
        frames = cache.frames(i)
        assert frames.shape == (len(numbers), 32, 32, 3) and isinstance(frames, np.memmap)
        assert np.array_equal(frames, raw.read(i, range(len(numbers))))
    assert cache.clip(0, clip_positions(cache.samples[0].interval, 16)).shape == (16, 32, 32, 3)
    assert (clean_cache / "index.csv").read_text().startswith("key,dataset,subject")


def test_interval_span_keeps_context_and_gaps(clean_cache):
    cache = FrameCache(clean_cache)
    sample, numbers = cache.samples[0], cache.frame_numbers(0)
    assert numbers[0] == sample.interval.onset - 1 and numbers[-1] == sample.interval.offset + 1
    folder_numbers = sorted(int(p.stem) for p in sample.path.glob("*.jpg"))
    assert set(numbers) <= set(folder_numbers)  # a gap stays a gap; clip sampling takes the nearest frame


def test_alignment_source_is_recorded(clean_cache):
    entries = FrameCache(clean_cache).entries
    assert entries[-1]["alignment"]["source"] == "dataset"  # the image's face box
    assert {e["alignment"]["source"] for e in entries[:-1]} <= {"detector", "center"}


def test_two_processes_write_the_same_cache(toy_root, clean_cache, tmp_path):
    report = prepare(toy_samples(toy_root), tmp_path / "pool", toy_root, "microexp", DATASET, SETTINGS,
                     workers=2, progress=False)
    assert report.complete
    assert_same_cache(FrameCache(tmp_path / "pool"), FrameCache(clean_cache))


def test_other_settings_are_refused(toy_root, clean_cache):
    bigger = FrameSettings(AlignSettings(size=48, margin=0.1), context=1)
    with pytest.raises(CacheMismatchError, match="frames.align.size: cache has 32, asked for 48"):
        prepare(toy_samples(toy_root), clean_cache, toy_root, "microexp", DATASET, bigger, workers=0)
    with pytest.raises(CacheMismatchError, match="frames.align.size"):
        open_source(clean_cache, DATASET, "microexp", settings=bigger)
    with pytest.raises(CacheMismatchError, match="dataset: cache has 'toy_cache_test', asked for 'casme2'"):
        open_source(clean_cache, "casme2")


def test_open_source_takes_a_raw_root_or_a_cache(toy_root, clean_cache):
    raw = open_source(toy_root, DATASET, "microexp", settings=SETTINGS)
    cached = open_source(clean_cache, DATASET, "microexp", settings=SETTINGS)
    assert isinstance(raw, RawFrames) and isinstance(cached, FrameCache)
    numbers = cached.frame_numbers(2)[:3]
    assert np.array_equal(raw.read_numbers(2, numbers), cached.read_numbers(2, numbers))


def test_failed_sample_then_crash_then_resume(toy_root, clean_cache, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    # every frame of one sample broken: no neighbour can stand in for a damaged frame, so the sample fails
    victims = sorted(toy_samples(root)[3].path.glob("*.jpg"))
    good_bytes = [victim.read_bytes() for victim in victims]
    for victim in victims:
        victim.write_bytes(b"broken")
    out = tmp_path / "cache"
    report = prepare(toy_samples(root), out, root, "microexp", DATASET, SETTINGS, workers=0, progress=False)
    assert not report.complete and len(report.failures) == 1
    assert "no frame of the folder can be decoded" in report.failures[0]["error"]
    assert json.loads((out / "failures.jsonl").read_text())["path"] == str(toy_samples(root)[3].path)
    with pytest.raises(CacheIncompleteError, match="rerun"):
        FrameCache(out)
    # a crash in the middle of the next sample: frames half written, its line torn
    shard = next((out / SHARD_DIR).glob("*.u8"))
    with open(shard, "ab") as handle:
        handle.write(b"\x07" * (32 * 32 * 3 * 2 + 100))
    with open(shard.with_suffix(".jsonl"), "a") as handle:
        handle.write('{"key": "toy_cache_test:data/spNo.9/x@1--2", "sta')
    for victim, data in zip(victims, good_bytes):
        victim.write_bytes(data)
    report = prepare(toy_samples(root), out, root, "microexp", DATASET, SETTINGS, workers=0, progress=False)
    assert report.complete and report.skipped == 5 and report.written == 1
    resumed, clean = FrameCache(out), FrameCache(clean_cache)
    for i in range(len(clean)):
        assert np.array_equal(resumed.frames(i), clean.frames(i))


def test_skip_failed_finishes_without_the_sample(toy_root, tmp_path):
    samples = toy_samples(toy_root) + [Sample(DATASET, "spNO.9", "image", toy_root / "missing.jpg")]
    report = prepare(samples, tmp_path / "c", toy_root, "microexp", DATASET, SETTINGS, workers=0,
                     skip_failed=True, progress=False)
    assert report.complete and len(report.failures) == 1 and "missing.jpg" in report.failures[0]["error"]
    assert len(FrameCache(tmp_path / "c")) == 6


def test_not_a_cache_and_not_empty_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(CacheError, match="not empty"):
        prepare([], tmp_path, tmp_path, "microexp", DATASET, SETTINGS, workers=0, progress=False)


SLOW_MODULE = textwrap.dedent('''
    """Registers a dataset whose frames take a while to read, so a prepare can be interrupted mid-way."""
    import time
    from pathlib import Path

    from common.data import register_dataset
    from common.data.readers import FrameFolder, register_reader
    from common.data.records import Interval, Sample, sample_from_dict, sample_key, sample_to_dict


    class SlowFolder(FrameFolder):
        def _read_positions(self, positions):
            time.sleep(0.04)
            return super()._read_positions(positions)


    register_reader("slow", SlowFolder)


    @register_dataset("slow_toy", task="microexp")
    def slow_toy(root):
        folders = sorted(Path(root).glob("data/*/*/color"))
        return [Sample("slow_toy", f.parts[-3], "slow", f, extra={"id": f"{f.parts[-3]}/{f.parts[-2]}/{k}"})
                for f in folders for k in range(2)]
''')


def run_prepare(helper_dir: Path, root: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(helper_dir), str(REPO)])}
    command = [sys.executable, "-m", "common.prepare", "--task", "microexp", "--dataset", "slow_toy",
               "--root", str(root), "--out", str(out), "--size", "32", "--workers", "1", "--import", "slow_toy"]
    # a harness that runs the tests in the background leaves SIGINT ignored, which a child inherits and Python then
    # keeps ignoring: give the child the default disposition, as a terminal's Ctrl-C would find it
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def done_lines(out: Path) -> int:
    return sum(p.read_text().count("\n") for p in (out / SHARD_DIR).glob("*.jsonl"))


def test_ctrl_c_loses_at_most_the_sample_in_progress(toy_root, tmp_path):
    (tmp_path / "slow_toy.py").write_text(SLOW_MODULE)
    out = tmp_path / "cache"
    process = run_prepare(tmp_path, toy_root, out)
    deadline = time.monotonic() + 60
    while done_lines(out) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "rerun the same command" in stderr
    interrupted_at, total = done_lines(out), 2 * len(list(toy_root.glob("data/*/*/color")))
    assert 2 <= interrupted_at < total and not (out / "index.jsonl").exists()

    process = run_prepare(tmp_path, toy_root, out)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"{interrupted_at} already cached, {total - interrupted_at} written" in stderr

    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module("slow_toy")
        samples = load_samples("slow_toy", toy_root, "microexp")
    finally:
        sys.path.remove(str(tmp_path))
    frames = FrameSettings(AlignSettings(size=32))
    prepare(samples, tmp_path / "clean", toy_root, "microexp", "slow_toy", frames, workers=0, progress=False)
    assert_same_cache(FrameCache(out), FrameCache(tmp_path / "clean"))


def test_sample_record_round_trip_keeps_types(tmp_path):
    sample = Sample("bp4d", "F001", "image", tmp_path / "F001" / "T1" / "2440.jpg", Interval(3, None, 9),
                    labels={"au_occ": {1: 0, 12: 1}, "au": np.array([0.5, 1.0], np.float16), "name": "x"},
                    label_mask={"au": np.array([True, False])}, extra={"fps": 25.0, "gain": float("nan")})
    row = json.loads(json.dumps(sample_to_dict(sample, tmp_path)))
    assert row["path"] == "F001/T1/2440.jpg"
    back = sample_from_dict(row, tmp_path)
    assert back.path == sample.path and back.interval == sample.interval
    assert back.labels["au_occ"] == {1: 0, 12: 1} and back.labels["au"].dtype == np.float16
    assert np.isnan(back.extra["gain"]) and sample_key(back, tmp_path) == "bp4d:F001/T1/2440.jpg@3--9"


def test_relative_root_gives_the_same_keys(toy_root, tmp_path, monkeypatch):
    monkeypatch.chdir(toy_root.parent)
    relative = Path(toy_root.name)
    report = prepare(toy_samples(relative), tmp_path / "c", relative, "microexp", DATASET, SETTINGS, workers=0,
                     progress=False)
    cache = FrameCache(tmp_path / "c")
    assert report.complete and cache.samples[0].path == toy_samples(toy_root)[0].path.resolve()


def test_cli_names_an_unknown_dataset(tmp_path, capsys):
    code = prepare_main(["--task", "microexp", "--dataset", "nope", "--root", str(tmp_path), "--out",
                         str(tmp_path / "c")])
    assert code == 2 and "unknown dataset 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- checksums


def copy_cache(clean_cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(clean_cache, copy)
    (copy / VERIFIED_FILE).unlink(missing_ok=True)
    return copy


def test_a_sound_cache_verifies_once_and_records_it(clean_cache, tmp_path):
    copy = copy_cache(clean_cache, tmp_path)
    assert verify_cache(copy) == []
    FrameCache(copy)
    assert (copy / VERIFIED_FILE).is_file()
    assert prepare_main(["--verify", str(copy)]) == 0


def test_flipped_bytes_name_the_shard_and_the_sample(clean_cache, tmp_path, capsys):
    copy = copy_cache(clean_cache, tmp_path)
    cache = FrameCache(copy, verify=False)
    victim = 2
    entry = cache.entries[victim]
    shard = copy / SHARD_DIR / f"{entry['shard']}.u8"
    data = bytearray(shard.read_bytes())
    data[(entry["start"] * 32 * 32 * 3) + 100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match=re.escape(entry["key"])):
        FrameCache(copy)
    assert prepare_main(["--verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert str(shard) in err and entry["key"] in err
    assert sum(e["key"] in err for e in cache.entries) == 1, "only the damaged sample is named"


def test_a_shard_cut_short_names_the_shard_and_first_lost_sample(clean_cache, tmp_path):
    copy = copy_cache(clean_cache, tmp_path)
    entries = FrameCache(copy, verify=False).entries
    last = entries[-2]  # a clip; the image after it may sit in the same shard
    shard = copy / SHARD_DIR / f"{last['shard']}.u8"
    with open(shard, "r+b") as handle:
        handle.truncate((last["start"] + 1) * 32 * 32 * 3)
    with pytest.raises(CacheCorruptError, match=f"{re.escape(str(shard))}.*cut short.*{re.escape(last['key'])}"):
        FrameCache(copy, verify=False)
