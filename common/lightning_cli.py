"""LightningCLI with the project's run layout: named run directories, default loggers, forced checkpointing."""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from common.errors import concise
from common.progress import LineProgress
from common.tasks import TaskSpec
from common.tracking import (RUN_DIR_ENV, RunSettings, evaluation_dir, is_global_zero, latest_run,
                             make_loggers, new_run_dir, run_of_checkpoint, trim_metrics)

DEFAULT_ROOT = "runs"


class ShortErrorParser(LightningArgumentParser):
    """A wrong flag or config key ends in the message alone, naming the config file that holds the key; the full
    usage is one `--help` away."""

    arguments: list[str] = []  # the command line LightningCLI parses (set by common.cli)

    def error(self, message: str, ex: Exception | None = None):
        program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "train.py"
        text = concise(message)
        key = re.search(r"(?:Option|Key) '([^']+)' is not (?:accepted|expected)", text)
        holder = key and config_holding(key.group(1).split(".")[-1], config_arguments(self.arguments))
        if holder:
            text += f" (in {holder})"
        sys.stderr.write(f"{program}: error: {text}\n(--help lists every option)\n")
        raise SystemExit(2)


def config_arguments(arguments: list[str]) -> list[str]:
    found = []
    for i, arg in enumerate(arguments):
        if arg in ("--config", "-c") and i + 1 < len(arguments):
            found.append(arguments[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def config_holding(key: str, files: list[str]) -> str | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*:", re.MULTILINE)
    for name in files:
        path = Path(name)
        if path.is_file() and pattern.search(path.read_text(errors="replace")):
            return str(path)
    return None


class TaskCLI(LightningCLI):
    def __init__(self, *args, spec: TaskSpec, **kwargs) -> None:
        self.spec = spec
        self.task = spec.name
        self.run_dir: Path | None = None
        self.checkpoint_run: Path | None = None  # the run whose checkpoint validate/test/predict read
        self.fresh_run = False
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunSettings, "run")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        for source, target in self.spec.links:
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:03d}", "checkpoint.auto_insert_metric_name": False})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        config.trainer.precision = resolve_precision(config.trainer.precision, config.trainer.accelerator)

    def after_instantiate_classes(self) -> None:
        self.model.run_config = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand]
        settings: RunSettings = config.run
        trainer_config = config.trainer
        name, group, tags = self.run_identity(settings)
        # Lightning's own --trainer.default_root_dir and --run.root both say where runs are kept
        root = trainer_config.get("default_root_dir") or settings.root or DEFAULT_ROOT
        run_dir = self.resolve_run_dir(Path(root) / self.task / name, config)
        self.run_dir = run_dir
        os.environ[RUN_DIR_ENV] = str(run_dir)
        checkpoint: ModelCheckpoint = config.checkpoint
        if checkpoint.dirpath is None:
            checkpoint.dirpath = str((self.checkpoint_run or run_dir) / "checkpoints")
        if checkpoint.monitor and getattr(self.datamodule, "validates", True) is False:
            rank_zero_info(f"no validation subjects: checkpoints are kept by epoch, not by {checkpoint.monitor}")
            checkpoint.monitor = None
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = make_loggers(settings, run_dir, name, group, tags, self.subcommand)
        kwargs["default_root_dir"] = str(run_dir)
        callbacks = list(trainer_config.get("callbacks") or []) + [FlushMetrics()]
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar() if sys.stdout.isatty() else LineProgress())
        kwargs["callbacks"] = callbacks
        rank_zero_info(f"run directory: {run_dir}")
        return super().instantiate_trainer(**kwargs)

    def run_identity(self, settings: RunSettings) -> tuple[str, str, list[str]]:
        """Name, group and tags from task, dataset, architecture and fold."""
        dataset = getattr(self.datamodule, "dataset_name", "data")
        arch = getattr(self.model, "arch_name", type(self.model).__name__)
        fold = getattr(self.datamodule, "fold", None)
        suffix = f"-fold{fold}" if fold is not None else ""
        name = settings.name or f"{dataset}-{arch}{suffix}"
        tags = [self.task, dataset, arch] + ([f"fold{fold}"] if fold is not None else [])
        return name, settings.group or f"{self.task}-{dataset}", tags

    def resolve_run_dir(self, base: Path, config) -> Path:
        """Rank 0 of the job picks the directory. The ranks Lightning launches on its node inherit the choice through
        the environment; ranks on other nodes (torchrun, srun) never write to theirs: checkpoints, the fold table
        and predictions reach rank 0's through Lightning's broadcast and a gather.

        `fit` makes a new version (`--ckpt_path last` continues the newest). `validate`, `test` and `predict` of a
        run's own checkpoint write inside that run (`RUN/test`, then `RUN/test-2`, ...); with a checkpoint from
        elsewhere, or another `--run.root`/`--run.name`, they make a version of their own there."""
        if not is_global_zero():
            return Path(os.environ.get(RUN_DIR_ENV) or new_run_dir(base))
        self.fresh_run = True
        evaluating = self.subcommand != "fit"
        if config.get("ckpt_path") == "last":
            resumed = latest_run(base, "checkpoints/last.ckpt")
            if resumed is None:
                raise SystemExit(f"--ckpt_path last: no checkpoints/last.ckpt under {base}/version_*")
            if evaluating:
                self.checkpoint_run = resumed
                return evaluation_dir(resumed, self.subcommand)
            self.fresh_run = False
            trim_metrics(resumed, _checkpoint_step(resumed / "checkpoints" / "last.ckpt"))
            return resumed
        owner = run_of_checkpoint(config.get("ckpt_path"))
        if evaluating and owner is not None and owner.parent.resolve() == base.resolve():
            self.checkpoint_run = owner
            return evaluation_dir(owner, self.subcommand)
        return new_run_dir(base)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            self.discard_failed_run()
            raise

    def discard_failed_run(self) -> None:
        """A new run that failed before its first training step leaves no directory behind."""
        trainer = getattr(self, "trainer", None)
        started = trainer is not None and trainer.global_step > 0
        if self.fresh_run and not started and self.run_dir is not None and is_global_zero():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for parent in (self.run_dir.parent, self.run_dir.parent.parent):
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()


class FlushMetrics(Callback):
    """metrics.csv is written at the end of every epoch, validation included, so whoever watches a run (a
    pruning search, a user with `tail`) sees each epoch as it ends instead of every hundred steps."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))


def resolve_precision(precision, accelerator):
    """`null` means the fastest safe choice for the hardware: bf16 mixed where supported, else fp16 on GPUs, fp32 on CPUs.

    An explicit bf16 request on a GPU without bf16 falls back to fp16 mixed precision instead of failing.
    """
    on_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if precision is None:
        if on_gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "bf16-mixed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32-true"
    if isinstance(precision, str) and precision.startswith("bf16") and on_gpu and not torch.cuda.is_bf16_supported():
        rank_zero_warn(f"precision {precision!r} is not supported by this GPU; using '16-mixed'")
        return "16-mixed"
    return precision
