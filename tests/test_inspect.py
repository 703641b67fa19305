"""python -m common.inspect: what a loader found, for any task, before training starts."""
from __future__ import annotations

import json

from common.inspect import main as inspect_main
from common.synth.formats.emotion import write_affectnet
from common.synth.formats.microexp import write_casme2
from tests.conftest import megc_roots


def inspected(capsys, *args: str) -> dict:
    assert inspect_main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_composite_by_dataset_with_what_its_scheme_leaves_out(megc, capsys):
    written, _ = megc
    roots = "{" + ", ".join(f"{k}: {v}" for k, v in megc_roots(written).items()) + "}"
    report = inspected(capsys, "--task", "microexp", "--dataset", "megc2019", "--root", roots)
    assert report["samples"] == 442 and report["subjects"] == 68
    assert {k: v["samples"] for k, v in report["by_dataset"].items()} == {"casme2": 145, "samm": 133, "smic": 164}
    assert {k: v["subjects"] for k, v in report["by_dataset"].items()} == {"casme2": 24, "samm": 28, "smic": 16}
    assert sum(report["classes"].values()) == 442 and set(report["classes"]) == {"negative", "positive", "surprise"}
    assert report["left_out"] == {"emotion 'fear' not in megc2019": 1, "emotion 'other' not in megc2019": 1,
                                  "emotion 'others' not in megc2019": 1, "emotion 'sadness' not in megc2019": 1}
    assert report["parsed"] == 446 and report["frames_missing"] == 0 and report["unreadable"] == []


def test_missing_frames_are_counted_unless_media_is_skipped(tmp_path, capsys):
    written = write_casme2(tmp_path / "casme2", subjects=1, per_subject=2, size=24)
    record = written.records[0]
    middle = (record.interval.onset + record.interval.offset) // 2
    (record.path / f"img{middle}.jpg").unlink()
    args = ["--task", "microexp", "--dataset", "casme2", "--root", str(written.root)]
    assert inspected(capsys, *args)["frames_missing"] == 1
    assert inspected(capsys, *args, "--no-media")["frames_missing"] == 0


def test_emotion_left_out_rows_come_from_the_parser_rules(tmp_path, capsys):
    written = write_affectnet(tmp_path / "affectnet", per_split=(22, 11), face_size=32)
    report = inspected(capsys, "--task", "emotion", "--dataset", "affectnet", "--root", str(written.root), "--no-media")
    dropped = sum(1 for r in written.records if r.problems)
    assert sum(report["left_out"].values()) == dropped > 0
    assert all(reason.startswith("expression ") for reason in report["left_out"])
    assert report["samples"] == len(written.records) - dropped


def test_a_wrong_root_is_one_line(tmp_path, capsys):
    assert inspect_main(["--task", "microexp", "--dataset", "smic", "--root", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
