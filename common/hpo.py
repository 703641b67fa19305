"""Hyper-parameter search over LOSO folds with Optuna.

    python -m common.hpo --task T --config C --space SPACE.yaml --trials N [--folds all|K,K,...]
                         [--objective val|loso] [--metric NAME] [--storage URL] [--study NAME] [--out DIR]
                         [--pruner median|halving|none] [--launcher local|ray] [--parallel N] [-- ARGS]

Each trial sets the space's options (any `--model.*`, `--data.*`, `--trainer.*` option of `train.py`) and trains
the chosen folds, through the same launchers as `common.loso run`. Its score is, with `--objective val` (the
default), the best validation score of each fold (the checkpoint monitor, on validation subjects carved from the
fold's training subjects) averaged over the folds: no test subject is read. With `--objective loso` the folds are
also tested and the trial is scored on their pooled test predictions (`common.loso score`), which selects on the
test subjects; the report says which objective chose the best trial.

Trials report every epoch's validation score, so the pruner (median, or successive halving) stops a trial that
trails the others. The study lives in `--storage` (default: `study.db`, SQLite, in the output folder); re-running
the command continues it until N trials have finished, and a trial whose process died is tried again. Any
database URL Optuna accepts (PostgreSQL, MySQL) lets workers on several machines share one study: start the same
command on each. Written to the output folder: `trials.csv`, `best.yaml` (the best trial's full recipe,
re-runnable with `train.py --config` or `common.loso run --config`), `study.json`, `history.png` and
`importances.png`; every fold run goes to W&B in one group named after the study.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from common.launch import FoldRun, announce, error_line, fold_versions, newest, reject_train_options
from common.loso import (Manifest, add_fanout_arguments, fold_jobs, make_launcher, parse_folds, planned_folds,
                         score_folds)

OBJECTIVES = ("val", "loso")
PRUNERS = ("median", "halving", "none")
TYPES = ("float", "int", "categorical")


# ---------------------------------------------------------------- the search space


@dataclass
class Param:
    """One searched option: float/int in [low, high] (log scale optional, int steps optional) or a list of choices."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclass
class Space:
    params: dict[str, Param]
    start: list[dict[str, Any]]  # trials evaluated first (the recipe's own values, say), before the sampler's


def load_space(path: Path | str) -> Space:
    """Read a space file: `parameters:` (option -> {type, low, high, log, step | choices}) and an optional `start:`
    list of points to try first. Every mistake names the file and the parameter."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--space: no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict) or not data["parameters"]:
        raise ValueError(f"{path}: needs a `parameters:` mapping (option -> type and range)")
    unknown = sorted(set(data) - {"parameters", "start"})
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a space file has `parameters:` and `start:`")
    params = {}
    for name, spec in data["parameters"].items():
        params[option_name(path, name)] = parse_param(path, option_name(path, name), spec)
    start = []
    for i, point in enumerate(data.get("start") or []):
        point = {option_name(path, k): v for k, v in (point or {}).items()}
        for name, value in point.items():
            if name not in params:
                raise ValueError(f"{path}: start point {i + 1} sets {name}, which is not a parameter of the space")
            if not params[name].contains(value):
                raise ValueError(f"{path}: start point {i + 1}: {name} = {value!r} is outside its range")
        start.append(point)
    return Space(params, start)


def option_name(path: Path, key: str) -> str:
    name = str(key).removeprefix("--")
    if name.split(".")[0] not in ("model", "data", "trainer", "checkpoint", "run") or "." not in name:
        raise ValueError(f"{path}: parameter {key!r}: name a train.py option such as model.lr or data.batch_size")
    return name


def parse_param(path: Path, name: str, spec: Any) -> Param:
    where = f"{path}: parameter {name}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ValueError(f"{where}: needs `type:` one of {list(TYPES)}")
    extra = sorted(set(spec) - {"type", "low", "high", "log", "step", "choices"})
    if extra:
        raise ValueError(f"{where}: unknown keys {extra}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: a categorical parameter needs a non-empty `choices:` list")
        return Param(name, "categorical", choices=choices)
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: needs numbers `low:` and `high:`") from None
    log = bool(spec.get("log", False))
    if not low < high:
        raise ValueError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log-scale range must be positive, got low {low}")
    if spec["type"] == "int" and (low != int(low) or high != int(high)):
        raise ValueError(f"{where}: an int parameter needs whole-number bounds")
    return Param(name, spec["type"], low, high, log, spec.get("step"))


def as_arguments(params: dict[str, Any]) -> list[str]:
    """Trial values as train.py arguments (JSON for anything that is not a string, so jsonargparse reads it back)."""
    arguments = []
    for name, value in params.items():
        arguments += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return arguments


# ---------------------------------------------------------------- reading a fold's validation scores


def epoch_values(metrics_file: Path, monitor: str) -> dict[int, float]:
    """Epoch -> the monitored validation value, from a run's metrics.csv. A last line without its newline is being
    written and is left for the next look ("0." may be the start of "0.83")."""
    if not metrics_file.is_file():
        return {}
    lines = metrics_file.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    values = {}
    for row in csv.DictReader(lines):
        try:
            values[int(float(row["epoch"]))] = float(row[monitor])
        except (KeyError, TypeError, ValueError):
            continue
    return values


def monitor_of(run_dir: Path) -> tuple[str, str]:
    """The checkpoint monitor and mode a run was configured with."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    checkpoint = config.get("checkpoint") or {}
    if not checkpoint.get("monitor"):
        raise ValueError(f"{run_dir / 'config.yaml'}: no checkpoint.monitor, so no validation score to search on; "
                         f"set one (and validation subjects, --data.val_fraction) or use --objective loso")
    return checkpoint["monitor"], checkpoint.get("mode", "min")


def best_validation(fit_dir: Path) -> float:
    monitor, mode = monitor_of(fit_dir)
    values = epoch_values(fit_dir / "metrics.csv", monitor)
    if not values:
        raise FoldsFailed(f"{fit_dir}: no {monitor} was logged (does the fold have validation subjects?)")
    return (max if mode == "max" else min)(values.values())


def metric_value(scores: dict, metric: str) -> float:
    """A dotted path into scores.json (`uf1`, `learned.overall.f1`)."""
    value: Any = scores
    for part in metric.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"--metric {metric}: the pooled scores have no {part!r} (they have "
                             f"{sorted(value) if isinstance(value, dict) else value})")
        value = value[part]
    return float(value)


def default_metric(objective: str, recipe: dict) -> str:
    if objective == "val":
        return (recipe.get("checkpoint") or {}).get("monitor") or "val/loss"
    return "uf1"


class FoldsFailed(RuntimeError):
    """A trial whose folds did not all finish: recorded as failed; the study goes on."""


# ---------------------------------------------------------------- one trial


class EpochReports:
    """Feeds each fold's per-epoch validation score to the trial (step = fold position x epochs + epoch, the same
    for every trial) and stops every fold of the trial when the pruner says so."""

    def __init__(self, trial, jobs, monitor: str, epochs: int):
        self.trial, self.jobs, self.monitor, self.epochs = trial, jobs, monitor, max(1, epochs)
        self.reported: set[int] = set()
        self.pruned = False

    def poll(self) -> None:
        if self.pruned:
            return
        new = False
        for position, job in enumerate(self.jobs):
            fit_dir = newest(fold_versions(Path(job.runs_root), job.fold))
            if fit_dir is None:
                continue
            for epoch, value in sorted(epoch_values(fit_dir / "metrics.csv", self.monitor).items()):
                step = position * self.epochs + epoch
                if step not in self.reported and math.isfinite(value):
                    self.trial.report(value, step)
                    self.reported.add(step)
                    new = True
        if new and self.trial.should_prune():
            self.pruned = True
            for job in self.jobs:
                job.stop_file.parent.mkdir(parents=True, exist_ok=True)
                job.stop_file.touch()


@dataclass
class Search:
    task: str
    config: str
    extra: list[str]
    space: Space
    folds: list[int]
    objective: str
    metric: str
    monitor: str
    epochs: int
    out: Path
    group: str
    launcher: Any

    def trial_dir(self, number: int) -> Path:
        return self.out / f"trial-{number:04d}"

    def __call__(self, trial) -> float:
        import optuna

        params = {name: param.suggest(trial) for name, param in self.space.params.items()}
        out = self.trial_dir(trial.number)
        for key, value in (("host", socket.gethostname()), ("pid", os.getpid()), ("dir", str(out))):
            trial.set_user_attr(key, value)
        print(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in params.items()), flush=True)
        tags = ["--run.tags", json.dumps(["hpo", f"trial-{trial.number}"])]
        manifest = Manifest(out, self.task, self.config, [*self.extra, *as_arguments(params), *tags])
        manifest.record()
        stages = ("fit",) if self.objective == "val" else ("fit", "test")
        jobs = fold_jobs(manifest, out, self.folds, stages, group=self.group)
        reports = EpochReports(trial, jobs, self.monitor, self.epochs)
        runs = self.launcher.run(jobs, started=manifest.record, finished=lambda r: (manifest.record(r), announce(r)),
                                 poll=reports.poll)
        reports.poll()
        if reports.pruned:
            raise optuna.TrialPruned(f"trial {trial.number} pruned at step {max(reports.reported)}")
        failed = [r for r in runs if r.status != "done"]
        if failed:
            reason = f"folds {[r.fold for r in failed]} failed: {error_line(failed[0].error) or failed[0].status}"
            trial.set_user_attr("error", reason)
            raise FoldsFailed(f"trial {trial.number}: {reason}")
        return self.score(trial, runs, out)

    def score(self, trial, runs: list[FoldRun], out: Path) -> float:
        runs = sorted(runs, key=lambda r: r.fold)
        if self.objective == "val":
            per_fold = {r.fold: best_validation(Path(r.fit_dir)) for r in runs}
            trial.set_user_attr("fold_values", {str(k): v for k, v in per_fold.items()})
            return float(sum(per_fold.values()) / len(per_fold))
        scores = score_folds(self.task, [Path(r.test_dir) for r in runs], out)
        return metric_value(scores, self.metric)


# ---------------------------------------------------------------- the study


def open_study(args: argparse.Namespace, out: Path, direction: str):
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # a worker that stops beating for grace_period (a killed job, a lost node) has its trial re-run once
    storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    # a failed trial is reported in one line by report_trial; Optuna's own warning adds a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=args.study, storage=storage, direction=direction, load_if_exists=True,
                                pruner=make_pruner(args))
    return study


def make_pruner(args: argparse.Namespace):
    import optuna

    if args.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=args.pruner_startup_trials,
                                           n_warmup_steps=args.pruner_warmup_epochs)
    if args.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, args.pruner_warmup_epochs))
    return optuna.pruners.NopPruner()


SETTINGS = ("task", "config", "space", "objective", "metric", "folds", "extra")


def check_same_search(study, settings: dict) -> None:
    """A study continues only the search it began: same task, recipe, space, objective, metric and folds."""
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
        return
    changed = [k for k in SETTINGS if saved.get(k) != settings.get(k)]
    if changed:
        raise ValueError(f"study {study.study_name!r} was started with other settings ({', '.join(changed)}: "
                         f"{', '.join(repr(saved.get(k)) for k in changed)}); give a new --study name to search "
                         f"differently")


def retry_interrupted(study) -> list[int]:
    """Trials left running by a process of this machine that is gone (Ctrl-C, a crash): failed, and queued again
    with the same values. Other machines' trials are left to the heartbeat."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    host, retried = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != host or pid is None or process_alive(int(pid)):
            continue
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study._storage.get_trial(trial._trial_id))
        retried.append(trial.number)
    return retried


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(args: argparse.Namespace) -> int:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    space = load_space(args.space)
    config = str(Path(args.config).resolve())
    args.study = args.study or f"{args.task}-{Path(args.config).stem}-{Path(args.space).stem}"
    out = Path(args.out or Path("runs") / args.task / f"hpo-{args.study}")
    table = planned_folds(out, args.task, config, args.extra)
    recipe = yaml.safe_load((out / "config.yaml").read_text())
    check_space_options(space, recipe, args.space)
    total = max(table.values()) + 1
    folds = parse_folds(args.folds)
    folds = list(range(total)) if folds is None else folds
    if any(not 0 <= k < total for k in folds):
        raise ValueError(f"--folds {args.folds}: the fold table has folds 0-{total - 1}")
    monitor, mode = monitor_of(out)
    if args.objective == "val" and args.metric not in (None, monitor):
        raise ValueError(f"--metric {args.metric}: with --objective val a trial is scored on the checkpoint monitor "
                         f"({monitor}); to search on another, pass -- --checkpoint.monitor {args.metric}")
    args.metric = args.metric or default_metric(args.objective, recipe)
    direction = ("maximize" if mode == "max" else "minimize") if args.objective == "val" else "maximize"
    study = open_study(args, out, direction)
    check_same_search(study, {"task": args.task, "config": config, "space": str(Path(args.space).resolve()),
                              "objective": args.objective, "metric": args.metric, "folds": folds,
                              "extra": args.extra})
    for number in retry_interrupted(study):
        print(f"trial {number} was interrupted: it runs again with the same values", flush=True)
    if not study.trials:
        for point in space.start:
            study.enqueue_trial(point)
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials))  # a resumed study goes on, not over
    search = Search(args.task, config, list(args.extra), space, folds, args.objective, args.metric, monitor,
                    int((recipe.get("trainer") or {}).get("max_epochs") or 1), out, args.study, make_launcher(args))
    done = finished_count(study)
    print(f"study {args.study}: {done} of {args.trials} trials finished; objective {describe(args)}; "
          f"{len(folds)} fold(s) per trial -> {out}", flush=True)
    failures = []

    def stop_on_repeated_failure(study, trial) -> None:
        if trial.state == TrialState.FAIL:
            failures.append(trial.number)
            if len(failures) > max(2, args.trials):
                print(f"stopping: {len(failures)} trials failed in this run", file=sys.stderr)
                study.stop()

    if done < args.trials:
        start = time.monotonic()
        study.optimize(search, n_jobs=args.jobs, catch=(FoldsFailed, ValueError), gc_after_trial=True,
                       callbacks=[MaxTrialsCallback(args.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                  stop_on_repeated_failure, lambda s, t: report_trial(t)])
        print(f"{time.monotonic() - start:.0f} s for this run's trials", flush=True)
    return write_outputs(study, args, out, search)


def describe(args: argparse.Namespace) -> str:
    if args.objective == "val":
        return (f"{args.metric} on validation subjects carved from each fold's training subjects, mean over the "
                f"folds (no test subject is read)")
    return f"{args.metric} of the folds' pooled test predictions (selects on the test subjects)"


def report_trial(trial) -> None:
    value = "" if trial.value is None else f" {trial.value:.4f}"
    error = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    print(f"trial {trial.number}: {trial.state.name.lower()}{value}{error}", flush=True)


def check_space_options(space: Space, recipe: dict, path: Path | str) -> None:
    """Every searched option must be one train.py takes for this recipe (its resolved config.yaml), checked before
    any fold trains; a misspelling names the space file, the option and the closest valid name."""
    import difflib

    valid = recipe_options(recipe)
    for name in space.params:
        key = name.replace(".init_args.", ".")
        if not any(key == option or key.startswith(option + ".") for option in valid):
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"{path}: parameter {name} is not an option of train.py for this recipe{hint}")


def recipe_options(recipe: dict) -> set[str]:
    """`section.option` for every option of a resolved recipe (model and data options live under init_args)."""
    options = set()
    for section, values in recipe.items():
        if not isinstance(values, dict):
            continue
        values = values.get("init_args", values) if "class_path" in values else values
        options.update(f"{section}.{key}" for key in values)
    return options


# ---------------------------------------------------------------- what a study leaves behind


def write_outputs(study, args: argparse.Namespace, out: Path, search: Search) -> int:
    from optuna.trial import TrialState

    write_trials(study, out / "trials.csv", list(search.space.params))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary = {"study": study.study_name, "objective": args.objective, "objective_means": describe(args),
               "metric": args.metric, "direction": study.direction.name.lower(), "folds": search.folds,
               "trials": {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}}
    if complete:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "dir": best.user_attrs.get("dir")}
        write_best_config(best, search, out / "best.yaml", args)
    (out / "study.json").write_text(json.dumps(summary, indent=2))
    save_figures(study, out)
    if args.wandb:
        log_to_wandb(study, out, search, summary)
    if not complete:
        print("no trial has completed yet", file=sys.stderr)
        return 1
    print(f"best: trial {best.number}, {args.metric} {best.value:.4f} ({describe(args)})\n  "
          + ", ".join(f"{k}={v}" for k, v in best.params.items()) + f"\n  recipe: {out / 'best.yaml'}", flush=True)
    return 0


def write_trials(study, path: Path, names: list[str]) -> None:
    columns = ["number", "state", "value", *names, "seconds", "dir"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for trial in study.get_trials(deepcopy=False):
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
                if trial.datetime_complete and trial.datetime_start else ""
            writer.writerow({"number": trial.number, "state": trial.state.name, "value": trial.value,
                             **{n: trial.params.get(n) for n in names}, "seconds": seconds,
                             "dir": trial.user_attrs.get("dir", "")})


def write_best_config(best, search: Search, path: Path, args: argparse.Namespace) -> None:
    """The best trial's whole recipe: the resolved config of one of its fold runs (recipe, extra arguments and the
    trial's values), without that fold's number and run placement, so it re-runs for any fold."""
    fit_dir = first_fit_dir(Path(best.user_attrs.get("dir", search.trial_dir(best.number))))
    recipe = yaml.safe_load((fit_dir / "config.yaml").read_text())
    recipe["data"].get("init_args", recipe["data"]).pop("fold", None)
    for key in ("root", "name", "group", "tags"):
        (recipe.get("run") or {}).pop(key, None)
    header = (f"# Best trial {best.number} of study {search.group}: {args.metric} = {best.value:.6g}\n"
              f"# objective: {describe(args)}\n"
              "# " + ", ".join(f"{k}={v}" for k, v in best.params.items()) + "\n"
              f"# python -m common.loso run --task {search.task} --config {path}\n")
    path.write_text(header + yaml.safe_dump(recipe, sort_keys=False))


def first_fit_dir(trial_dir: Path) -> Path:
    manifest = json.loads((trial_dir / "loso.json").read_text())
    return Path(next(run["fit_dir"] for run in manifest["folds"].values() if run.get("fit_dir")))


def save_figures(study, out: Path) -> None:
    """history.png (every trial's value, the best so far) and importances.png (fANOVA importance of each
    parameter, from two completed trials on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    better = max if study.direction.name == "MAXIMIZE" else min
    ax.scatter(numbers, values, s=18, label="trial")
    ax.step(numbers, [better(values[: i + 1]) for i in range(len(values))], where="post", color="C1",
            label="best so far")
    pruned = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))]
    for number in pruned:
        ax.axvline(number, color="0.85", lw=1, zorder=0)
    ax.set_xlabel("trial (grey lines: pruned)")
    ax.set_ylabel("objective")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=110)
    plt.close(fig)

    importances = parameter_importances(study)
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(1, len(importances))))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="C0")
        ax.set_xlabel("importance (fANOVA)")
    else:
        ax.text(0.5, 0.5, "importances need two completed trials with different values", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "importances.png", dpi=110)
    plt.close(fig)


def parameter_importances(study) -> dict[str, float]:
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({json.dumps(t.params, sort_keys=True, default=str) for t in complete}) < 2:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}


def log_to_wandb(study, out: Path, search: Search, summary: dict) -> None:
    """One W&B run for the study, in the group of its fold runs: a table of the trials and the best trial."""
    import wandb

    from common.tracking import WANDB_ID_FILE, new_wandb_id, wandb_mode

    id_file = out / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else new_wandb_id()
    id_file.write_text(run_id)
    run = wandb.init(project="facex", group=search.group, job_type="hpo", name=f"{search.group}-study", id=run_id,
                     resume="allow", dir=str(out), mode=wandb_mode(), config={"settings": study.user_attrs.get("settings")},
                     settings=wandb.Settings(silent=True))
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    run.log({"trials": wandb.Table(columns=rows[0], data=rows[1:]),
             "history": wandb.Image(str(out / "history.png"))})
    run.summary.update({k: v for k, v in summary.items() if k in ("best", "trials", "objective", "metric")})
    run.finish()


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    reject_train_options(argv, "python -m common.hpo")
    parser = argparse.ArgumentParser(prog="python -m common.hpo", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--config", required=True, help="the recipe every trial starts from")
    parser.add_argument("--space", required=True, help="search space YAML (configs/hpo/)")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should have")
    parser.add_argument("--folds", default="all", help="'all', or the folds each trial trains, e.g. 0,5,11")
    parser.add_argument("--objective", choices=OBJECTIVES, default="val",
                        help="val: validation subjects of the training folds (default); loso: pooled test scores")
    parser.add_argument("--metric", help="val: the checkpoint monitor (default); loso: a key of scores.json, "
                                         "dotted (default uf1; spotting: learned.overall.f1)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/study.db); share one "
                                          "database between machines to search with all of them")
    parser.add_argument("--study", help="study name (default <task>-<config>-<space>)")
    parser.add_argument("--out", help="output folder (default runs/<task>/hpo-<study>)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median")
    parser.add_argument("--pruner-startup-trials", type=int, default=3, help="trials completed before pruning starts")
    parser.add_argument("--pruner-warmup-epochs", type=int, default=3, help="epochs a trial runs before it can be "
                                                                            "pruned (halving: the first rung)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at a time in this process")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--wandb", type=lambda v: v.lower() not in ("0", "false", "no"), default=True,
                        help="log the study to W&B (offline without a key); fold runs follow --run.wandb")
    add_fanout_arguments(parser)
    args = parser.parse_args(argv)
    args.extra = extra
    if args.launcher == "slurm":
        parser.error("--launcher slurm: a study needs each trial's result before it picks the next; run this "
                     "command in SLURM jobs sharing one --storage instead (see README)")
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    args.cpus_per_fold = args.cpus_per_fold or 1
    try:
        return run_study(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hpo: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
