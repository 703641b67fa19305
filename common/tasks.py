"""The task registry: which LightningModule and LightningDataModule make a task, and its default recipe.

Classes are named by import path so that choosing a task (or reporting an unknown one) costs no import of
torch or of the other tasks.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    module: str
    datamodule: str
    contract: str  # "<task>.contract.CONTRACT": importable without torch, for the runtime
    default_config: str
    # Where the default recipe is meant to run, for --help
    default_runs_on: str = "for a GPU"
    # Values the model takes from the instantiated data module (class names, input size, ...).
    links: tuple[tuple[str, str], ...] = ()
    # How the test outputs of a LOSO run's folds are pooled and scored: `f(test_dirs, out) -> (scores, lines)`,
    # writing the pooled files and scores.json into `out`.
    fold_scorer: str = "common.loso.pool_predictions"

    def module_class(self) -> type:
        return _import_object(self.module)

    def contract_object(self):
        return _import_object(self.contract)

    def datamodule_class(self) -> type:
        return _import_object(self.datamodule)

    def score_folds(self, test_dirs, out):
        return _import_object(self.fold_scorer)(test_dirs, out)

    def config_files(self) -> list[str]:
        return [str(CONFIG_DIR / "trainer.yaml"), str(CONFIG_DIR / self.default_config)]

    @property
    def quick_config(self) -> str:
        """A few lines over the default recipe that train, test and export in minutes on a CPU."""
        return f"configs/{self.name}/quick.yaml"

    def recipes_text(self) -> str:
        return (f"{self.name}: default recipe configs/{self.default_config} ({self.default_runs_on}); "
                f"in minutes on a CPU: --config {self.quick_config}")


# What a classification model takes from its data module.
CLASSIFICATION_LINKS = (("data.class_names", "model.init_args.class_names"),
                        ("data.image_size", "model.init_args.image_size"),
                        ("data.preprocessing", "model.init_args.preprocessing"))

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("emotion", "emotion.module.EmotionModule", "emotion.data.EmotionDataModule", "emotion.contract.CONTRACT",
                 "emotion/synthetic.yaml", links=CLASSIFICATION_LINKS),
        TaskSpec("microexp", "microexp.module.MicroExpModule", "microexp.data.MicroExpDataModule",
                 "microexp.contract.CONTRACT", "microexp/synthetic.yaml",
                 links=CLASSIFICATION_LINKS + (("data.clip_length", "model.init_args.clip_length"),
                                               ("data.class_groups", "model.init_args.class_groups"))),
        TaskSpec("au", "au.module.AUModule", "au.data.AUDataModule", "au.contract.CONTRACT", "au/synthetic.yaml",
                 links=CLASSIFICATION_LINKS),
        TaskSpec("spotting", "spotting.module.SpottingModule", "spotting.data.SpottingDataModule",
                 "spotting.contract.CONTRACT", "spotting/synthetic.yaml",
                 links=(("data.feature_dim", "model.init_args.feature_dim"), ("data.features", "model.init_args.features"),
                        ("data.preprocessing", "model.init_args.preprocessing")),
                 fold_scorer="spotting.evaluate.pool_folds", default_runs_on="minutes on a CPU, less on a GPU"),
    )
}


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return f"unknown task {self.args[0]!r}; registered tasks: {', '.join(sorted(TASKS))}"


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(name) from None


def _import_object(path: str):
    module_name, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)
