"""The emotion recipes under configs/emotion/: they parse, say what to expect and how to run them, carry the
published hyper-parameters, and each architecture trains a step with its recipe on the synthetic faces."""
from __future__ import annotations


import pytest
import yaml

from common.cli import main as train_main
from common.data.sampling import ClassBalancedSampler
from common.synth.formats.emotion import write_affectnet_npy, write_fer2013, write_rafdb
from tests.conftest import REPO

CONFIGS = REPO / "configs" / "emotion"
RECIPES = ["rafdb_posterpp", "affectnet7_posterpp", "affectnet8_posterpp", "rafdb_dan", "affectnet8_dan",
           "fer2013_resnet18", "joint_posterpp"]

# What each recipe must keep (see the sources quoted in the files): model, data and trainer values.
EXPECTED = {
    "rafdb_posterpp": ({"arch": "posterpp", "optimizer": "sam_adam", "sam_rho": 0.05, "lr": 3.5e-5,
                        "weight_decay": 0.0, "scheduler": "exponential", "lr_gamma": 0.98},
                       {"dataset": "rafdb", "num_classes": 7, "batch_size": 72, "balanced_sampler": False}, 200),
    "affectnet7_posterpp": ({"arch": "posterpp", "optimizer": "sam_adam", "lr": 1e-6, "lr_gamma": 0.98},
                            {"dataset": "affectnet_npy", "num_classes": 7, "batch_size": 72,
                             "balanced_sampler": True}, 200),
    "affectnet8_posterpp": ({"arch": "posterpp", "optimizer": "sam_adam", "lr": 1e-6, "lr_gamma": 0.98},
                            {"dataset": "affectnet_npy", "num_classes": 8, "batch_size": 72,
                             "balanced_sampler": True}, 200),
    "rafdb_dan": ({"arch": "dan", "optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "scheduler": "step",
                   "lr_step_epochs": 10, "lr_gamma": 0.1},
                  {"dataset": "rafdb", "num_classes": 7, "batch_size": 128, "balanced_sampler": False}, 40),
    "affectnet8_dan": ({"arch": "dan", "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,
                        "scheduler": "exponential", "lr_gamma": 0.6},
                       {"dataset": "affectnet_npy", "num_classes": 8, "batch_size": 128, "balanced_sampler": True}, 10),
    "fer2013_resnet18": ({"arch": "resnet18"}, {"dataset": "fer2013", "num_classes": 7}, 40),
    "joint_posterpp": ({"arch": "posterpp", "optimizer": "sam_adam"},
                       {"dataset": ["affectnet_npy", "rafdb", "fer2013"], "num_classes": 7,
                        "balanced_sampler": True}, 40),
}

# The synthetic faces at a size every architecture accepts (POSTER++ resizes to 112 inside), two per batch.
SYNTHETIC = ["--data.dataset", "synthetic", "--data.image_size", "64", "--data.subjects", "[2, 1, 1]",
             "--data.per_subject", "4", "--data.batch_size", "2", "--data.num_workers", "0",
             "--trainer.accelerator", "cpu", "--trainer.devices", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


# Small settings shared by runs on real-format fixture trees; the dataset and its root come from the recipe.
FIXTURE_RUN = ["--data.image_size", "64", "--data.batch_size", "2", "--data.num_workers", "0",
               "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.fast_dev_run", "true",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
WRITERS = {"rafdb": write_rafdb, "affectnet_npy": write_affectnet_npy, "fer2013": write_fer2013}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def printed_config(name: str, capsys) -> dict:
    with pytest.raises(SystemExit) as done:
        train_main(["--task", "emotion", "fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_recipe_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(RECIPES + ["synthetic", "quick"])  # quick: test_quickstart


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_and_keeps_the_published_values(name, capsys):
    config = printed_config(name, capsys)
    model, data, epochs = EXPECTED[name]
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    assert {k: model_args[k] for k in model} == pytest.approx(model)
    assert {k: data_args[k] for k in data} == data
    assert config["trainer"]["max_epochs"] == epochs
    assert config["checkpoint"]["monitor"] == "val/acc" and config["checkpoint"]["mode"] == "max"
    assert config["trainer"]["precision"] is None, "precision is left to the hardware default (bf16 where supported)"
    assert model_args["mixup_alpha"] == 0 and model_args["cutmix_alpha"] == 0


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_header_states_expected_result_and_command(name):
    header = [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "Expected:" in text
    assert f"python train.py --task emotion fit --config configs/emotion/{name}.yaml" in text


def test_published_recipes_augment_like_the_papers(capsys):
    """POSTER++ flips and erases only; DAN adds its random affine map; neither jitters colour or crops."""
    for name in ("rafdb_posterpp", "affectnet8_posterpp", "rafdb_dan", "affectnet8_dan"):
        augment = printed_config(name, capsys)["model"]["init_args"]["augment"]
        assert "hflip" in augment and "erasing" in augment
        assert ("affine" in augment) == name.endswith("dan"), name
        assert not {"color_jitter", "resized_crop"} & set(augment), name


NO_WEIGHTS = ["--model.backbone_weights", "null", "--model.landmark_weights", "null"]


def first_decay(scheduler) -> tuple[int, float]:
    """(step, factor) of a per-step schedule's first drop below its starting value."""
    factor = scheduler.lr_lambdas[0]
    step = next(s for s in range(1, 100_000) if factor(s) < factor(0))
    return step, factor(step)


@pytest.mark.parametrize("name", ["rafdb_posterpp", "rafdb_dan", "affectnet8_dan", "fer2013_resnet18"])
def test_recipe_values_reach_the_optimiser_scheduler_sampler_and_model(name, tmp_path):
    """A step with the recipe on the synthetic faces; then the live objects are compared with the YAML file
    (branch weights are left out: they are not in the repository)."""
    recipe = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    model_args = recipe["model"]["init_args"]
    cli = train_main(["--task", "emotion", "fit", "--config", str(CONFIGS / f"{name}.yaml"), *SYNTHETIC, *NO_WEIGHTS,
                      "--data.balanced_sampler", str(recipe["data"]["init_args"]["balanced_sampler"]).lower(),
                      "--trainer.fast_dev_run", "true", "--run.root", str(tmp_path), "--run.wandb", "false"])
    module, trainer = cli.model, cli.trainer
    optimizer = trainer.optimizers[0]
    base = getattr(optimizer, "base_optimizer", optimizer)
    assert type(base).__name__.lower() == model_args["optimizer"].removeprefix("sam_")
    assert base.param_groups[0]["lr"] == pytest.approx(model_args["lr"], rel=0.5) or model_args["scheduler"] == "cosine"
    assert base.defaults["lr"] == pytest.approx(model_args["lr"])
    assert max(g["weight_decay"] for g in base.param_groups) == pytest.approx(model_args["weight_decay"])
    if model_args["optimizer"].startswith("sam_"):
        assert optimizer.param_groups[0]["rho"] == pytest.approx(model_args["sam_rho"])
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    if model_args["scheduler"] in ("exponential", "step"):
        step, factor = first_decay(scheduler)
        assert factor == pytest.approx(model_args["lr_gamma"])
        epochs_per_decay = model_args.get("lr_step_epochs", 1) if model_args["scheduler"] == "step" else 1
        assert step % epochs_per_decay == 0
    sampler = trainer.train_dataloader.sampler
    assert isinstance(sampler, ClassBalancedSampler) == recipe["data"]["init_args"]["balanced_sampler"]
    assert module.arch == model_args["arch"] and module.label_smoothing == model_args["label_smoothing"]
    for key, value in (model_args.get("model_kwargs") or {}).items():
        if key == "affinity_centers":
            assert module.net.affinity_loss.centers.shape[0] == value
        else:
            assert getattr(module.net, key) == value, key
    augment = model_args["augment"]
    ops = [type(op).__name__ for op in module.augmenter.images] if module.augmenter is not None else []
    expected_ops = {"hflip": "RandomHorizontalFlip", "erasing": "RandomErasing", "affine": "RandomAffine",
                    "resized_crop": "RandomResizedCrop", "color_jitter": "ColorJitter"}
    if augment is not True:
        assert sorted(ops) == sorted(expected_ops[k] for k in augment)
    erasing = next((op for op in (module.augmenter.images if module.augmenter else []) if type(op).__name__ == "RandomErasing"), None)
    if isinstance(augment, dict) and "erasing" in augment:
        assert erasing.value == augment["erasing"]["value"] and erasing.p == augment["erasing"]["p"]


@pytest.fixture(scope="module")
def dataset_trees(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("datasets")
    for name, write in WRITERS.items():
        write(base / name)
    return {name: base / name for name in WRITERS}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fits_on_its_datasets_in_their_real_format(name, dataset_trees, tmp_path, capsys):
    """`--config <recipe> --data.root <tree>` as a user runs it, on trees written in each dataset's format."""
    datasets = printed_config(name, capsys)["data"]["init_args"]["dataset"]
    names = datasets if isinstance(datasets, list) else [datasets]
    root = str(dataset_trees[names[0]]) if len(names) == 1 else \
        yaml.safe_dump({d: str(dataset_trees[d]) for d in names}, default_flow_style=True).strip()
    cli = train_main(["--task", "emotion", "fit", "--config", str(CONFIGS / f"{name}.yaml"), *FIXTURE_RUN, *NO_WEIGHTS,
                      "--data.root", root, "--run.root", str(tmp_path), "--run.wandb", "false"])
    assert cli.datamodule.datasets == names and cli.trainer.global_step == 1
