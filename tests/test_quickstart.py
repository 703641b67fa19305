"""README's quick start, as written there, at a small size: for every task the quick recipe trains, its test
writes inside the run, the export of the run succeeds and the runtime's check accepts the exported file."""
from __future__ import annotations

import csv
import shlex

import pytest

from common.cli import main as train_main
from common.export import main as export_main
from common.tasks import TASKS
from runtime.check import main as check_main
from tests.conftest import REPO

# README's data sizes and epochs shrunk so that a test stays short; everything else is the quick recipe's
SMALL = {
    "emotion": ["--data.subjects", "[3, 1, 1]", "--data.per_subject", "4", "--data.batch_size", "4"],
    "microexp": ["--data.subjects", "[2, 1, 1]", "--data.per_subject", "3", "--data.batch_size", "3"],
    "au": ["--data.subjects", "[2, 1, 1]", "--data.per_subject", "4", "--data.batch_size", "4"],
    "spotting": ["--data.subjects", "[2, 1, 1]", "--data.seconds", "12"],
}
ONE_EPOCH = ["--trainer.max_epochs", "1", "--data.num_workers", "0", "--trainer.accelerator", "cpu",
             "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--run.wandb", "false"]


def readme_quick_lines() -> dict[str, str]:
    lines = [line for line in (REPO / "README.md").read_text().splitlines()
             if line.startswith("python train.py --task") and "/quick.yaml" in line and " && " in line]
    return {shlex.split(line)[3]: line for line in lines}


def test_every_task_has_a_quick_recipe_and_a_readme_line(capsys):
    from common.cli import parse_task

    assert set(readme_quick_lines()) == set(TASKS)
    assert all((REPO / spec.quick_config).is_file() for spec in TASKS.values())
    with pytest.raises(SystemExit) as done:
        parse_task(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert all(spec.quick_config in shown and spec.default_config in shown for spec in TASKS.values())


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_readme_quick_start_gives_a_model_the_runtime_accepts(task, tmp_path, capsys):
    line = readme_quick_lines()[task].replace("runs/", f"{tmp_path}/runs/").replace("models/", f"{tmp_path}/models/")
    for command in line.split(" && "):
        args = shlex.split(command)
        if args[:2] == ["python", "train.py"]:
            train_main([*args[2:], "--run.root", str(tmp_path / "runs"), *SMALL[task], *ONE_EPOCH])
        elif args[:3] == ["python", "-m", "common.export"]:
            assert export_main(args[3:]) == 0
        else:
            assert args[:3] == ["python", "-m", "runtime.check"], command
            assert check_main(args[3:]) == 0, capsys.readouterr().err
    runs = sorted((tmp_path / "runs" / task / "quick").glob("version_*"))
    assert len(runs) == 1, "the test of a run writes inside it"
    metrics = list(csv.DictReader((runs[0] / "test" / "metrics.csv").open()))
    assert any(key.startswith("test/") and value for row in metrics for key, value in row.items())
