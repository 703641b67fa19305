"""The micro-expression recipes under configs/microexp/: they parse, say what they reproduce and what to expect,
and each fits a step on trees written in its datasets' real formats (with a tiny VideoMAE, no weights)."""
from __future__ import annotations

import csv

import pytest
import yaml

from common.cli import main as train_main
from common.synth.formats.microexp import write_casme2, write_casme3, write_samm, write_smic
from tests.conftest import REPO

CONFIGS = REPO / "configs" / "microexp"
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in ("synthetic", "quick"))  # quick: test_quickstart
WRITERS = {"casme2": write_casme2, "samm": write_samm, "smic": write_smic, "casme3": write_casme3}
SMALL = ["--data.image_size", "32", "--data.clip_length", "4", "--data.batch_size", "2", "--data.num_workers", "0",
         "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--run.wandb", "false"]
TINY = [*SMALL, "--trainer.fast_dev_run", "true"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("microexp_trees")
    return {name: write(base / name, subjects=3, per_subject=3, size=32).root for name, write in WRITERS.items()}


def recipe(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", RECIPES)
def test_header_says_what_it_reproduces_and_how_to_run_it(name):
    header = "\n".join(line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if line.startswith("#"))
    assert "Expected" in header or "reported" in header
    assert f"python -m common.loso run --task microexp --config configs/microexp/{name}.yaml" in header


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fits_a_fold_on_its_datasets_in_their_real_format(name, trees, tmp_path):
    data_args = recipe(name)["data"]["init_args"]
    datasets = data_args["dataset"] if isinstance(data_args["dataset"], list) else [data_args["dataset"]]
    parts = [p for d in datasets for p in (("casme2", "samm", "smic") if d == "megc2019" else (d,))]
    root = str(trees[parts[0]]) if len(parts) == 1 else yaml.safe_dump({p: str(trees[p]) for p in parts},
                                                                        default_flow_style=True).strip()
    arch = recipe(name)["model"]["init_args"]["arch"]
    tiny_arch = ["--model.arch", "videomae_tiny"] if arch.startswith("videomae") else []
    tiny_arch += [] if arch == "roi_transformer" else ["--model.pretrained", "null"]
    cache = ["--data.feature_cache", str(tmp_path / "flow")] if arch == "roi_transformer" else []
    cli = train_main(["--task", "microexp", "fit", "--config", str(CONFIGS / f"{name}.yaml"), *TINY, *tiny_arch,
                      *cache, "--data.root", root, "--run.root", str(tmp_path)])
    assert cli.trainer.global_step == 1
    assert cli.datamodule.scheme == data_args["scheme"] and cli.model.class_names == cli.datamodule.class_names
    assert cli.datamodule.fold == 0 and cli.datamodule.datasets == parts


def test_the_synthetic_default_runs_with_no_arguments_but_size(tmp_path):
    cli = train_main(["--task", "microexp", "fit", "--model.arch", "videomae_tiny", "--data.image_size", "32",
                      "--data.clip_length", "4", "--data.subjects", "[2, 1, 1]", "--data.per_subject", "3",
                      "--data.batch_size", "3", "--data.num_workers", "0", "--trainer.accelerator", "cpu",
                      "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--run.root",
                      str(tmp_path), "--run.wandb", "false"])
    assert cli.trainer.global_step == 2 and cli.model.class_names == ["negative", "positive", "surprise"]
    run = next(tmp_path.glob("microexp/*/version_0"))
    test = train_main(["--task", "microexp", "test", "--config", str(run / "config.yaml"), "--ckpt_path",
                       str(run / "checkpoints" / "last.ckpt")])
    rows = (next(tmp_path.glob("microexp/*/version_0/test/predictions.csv"))).read_text().splitlines()
    assert rows[0].startswith("dataset,subject,sample,label,pred,p_negative") and len(rows) == 1 + 3
    assert all(line.split(",")[1] == "synthetic/3" for line in rows[1:])
    assert test.trainer.callback_metrics["test/acc"] >= 0


def test_one_head_per_dataset_end_to_end(trees, tmp_path):
    roots = yaml.safe_dump({d: str(trees[d]) for d in ("casme2", "smic")}, default_flow_style=True).strip()
    args = ["--config", str(CONFIGS / "joint4_videomae_b.yaml"), *SMALL,
            "--model.arch", "videomae_tiny", "--model.pretrained", "null", "--data.dataset", "casme2+smic",
            "--data.root", roots, "--data.heads", "per_dataset", "--data.scheme", "null", "--data.val_fraction", "0",
            "--trainer.max_epochs", "1", "--run.root", str(tmp_path)]
    cli = train_main(["--task", "microexp", "fit", *args])
    assert cli.model.class_groups == {"casme2": (0, 5), "smic": (5, 8)} and len(cli.model.class_names) == 8
    run = next(tmp_path.glob("microexp/*/version_0"))
    train_main(["--task", "microexp", "test", "--config", str(run / "config.yaml"), "--ckpt_path",
                str(run / "checkpoints" / "last.ckpt")])
    rows = list(csv.DictReader(open(next(tmp_path.glob("microexp/*/version_0/test/predictions.csv")))))
    assert rows
    for row in rows:
        own = [c for c in row if c.startswith(f"p_{row['dataset']}:")]
        other = [c for c in row if c.startswith("p_") and c not in own]
        assert sum(float(row[c]) for c in own) > 0.999 and all(float(row[c]) == 0 for c in other)
        assert row["pred"].startswith(row["dataset"] + ":") and row["label"].startswith(row["dataset"] + ":")
