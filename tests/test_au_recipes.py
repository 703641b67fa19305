"""The AU recipes under configs/au/: each states what it reproduces and fits a step on BP4D / DISFA trees in their
real formats (a ResNet-18 at 64 px stands in for the recipe's backbone, no weight files)."""
from __future__ import annotations

import json

import pytest
import yaml

from common.cli import main as train_main
from common.inspect import main as inspect_main
from common.synth.formats.au import write_bp4d, write_disfa
from tests.conftest import REPO

CONFIGS = REPO / "configs" / "au"
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in ("synthetic", "quick"))  # quick: test_quickstart
# subjects from every part of the published protocols, so that each fold has test subjects
BP4D_SUBJECTS = ("F001", "M007", "M011", "F003", "F007", "F015")
DISFA_SUBJECTS = ("SN002", "SN010", "SN013", "SN018", "SN003", "SN029")
SMALL = ["--model.backbone", "resnet18", "--model.pretrained", "null", "--model.init_from", "null",
         "--data.image_size", "64", "--model.crop_size", "56", "--data.batch_size", "2", "--data.num_workers", "0",
         "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.fast_dev_run", "true",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--run.wandb", "false"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("au_trees")
    return {"bp4d": write_bp4d(base / "bp4d", subjects=BP4D_SUBJECTS, tasks=("T1",), frames=4, size=48).root,
            "disfa": write_disfa(base / "disfa", subjects=DISFA_SUBJECTS, frames=6, size=48).root}


@pytest.mark.parametrize("name", RECIPES)
def test_header_says_what_it_reproduces(name):
    header = "\n".join(l for l in (CONFIGS / f"{name}.yaml").read_text().splitlines() if l.startswith("#"))
    assert "Expected" in header and f"--config configs/au/{name}.yaml" in header


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fits_a_fold_on_its_datasets(name, trees, tmp_path):
    recipe = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    data = recipe["data"]["init_args"]
    parts = data["dataset"].split("+")
    root = str(trees[parts[0]]) if len(parts) == 1 else yaml.safe_dump({p: str(trees[p]) for p in parts},
                                                                        default_flow_style=True).strip()
    cli = train_main(["--task", "au", "fit", "--config", str(CONFIGS / f"{name}.yaml"), *SMALL, "--data.root", root,
                      "--run.root", str(tmp_path)])
    assert cli.trainer.global_step == 1
    assert cli.model.net.stage == recipe["model"]["init_args"]["stage"]
    assert cli.model.net.head.gnn.__class__.__name__ == ("NodeGraph" if cli.model.net.stage == 1 else "GatedGraph")
    assert len(cli.model.class_names) == {"bp4d12": 12, "disfa8": 8, "app17": 17}[data["aus"]]
    assert float(cli.model.au_weights.mean()) == pytest.approx(1.0, rel=1e-4)


def test_inspect_counts_positive_and_unknown_aus(trees, capsys):
    assert inspect_main(["--task", "au", "--dataset", "bp4d+disfa", "--root",
                         f"{{bp4d: {trees['bp4d']}, disfa: {trees['disfa']}}}", "--json", "--no-media"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["au_positive"]) == set(report["au_unknown"]) and "AU27" in report["au_unknown"]
    assert report["by_dataset"]["disfa"]["au_unknown"]["AU07"] == report["by_dataset"]["disfa"]["samples"]
    assert report["au_unknown"]["AU27"] == report["samples"], "neither dataset codes AU27"
