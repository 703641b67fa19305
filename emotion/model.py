"""Emotion architectures by name: the project's own (POSTER++, DAN) or any timm model as a baseline.

Building a model reads no file. Local weights come in a second step, `load_weights`, which the Lightning module
runs only when a run starts from scratch, so a checkpoint opens anywhere without the files it started from.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
from torch import nn

# name -> "module:class" taking (num_classes, **kwargs); imported only when asked for.
MODELS: dict[str, str] = {
    "posterpp": "emotion.posterpp:PosterPP",
    "dan": "emotion.dan:DAN",
}
# Constructor arguments of an architecture that name weight files, and the role each plays in `WeightFiles`.
WEIGHT_ARGUMENTS: dict[str, dict[str, str]] = {
    "posterpp": {"ir50_weights": "backbone", "landmark_weights": "landmark"},
    "dan": {"backbone_weights": "backbone"},
}


@dataclass(frozen=True)
class WeightFiles:
    """Local files a model starts from. pretrained: a whole model (official POSTER++/DAN checkpoint, or a timm
    model file whose head is replaced); backbone: DAN's ResNet-18 trunk or POSTER++'s IR-50; landmark: POSTER++'s
    MobileFaceNet."""

    pretrained: str | None = None
    backbone: str | None = None
    landmark: str | None = None
    allow_pickle: bool = False

    def any(self) -> bool:
        return any((self.pretrained, self.backbone, self.landmark))


def create_model(arch: str, num_classes: int, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build `arch` with `num_classes` outputs; with `pretrained` (a local file) load it at once."""
    kwargs = dict(kwargs)
    files = split_weight_arguments(arch, kwargs, WeightFiles(pretrained, allow_pickle=kwargs.get("allow_pickle", False)))
    model = build(arch, num_classes, **kwargs)
    load_weights(model, arch, files)
    return model


def build(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """The architecture with random weights; reads no file."""
    if arch in MODELS:
        return _builder(arch)(num_classes, **kwargs)
    if not timm.is_model(arch):
        raise ValueError(f"--model.arch {arch!r} is not an emotion architecture: use one of {sorted(MODELS)} "
                         f"or a timm model name")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def refuse_weight_arguments(arch: str, model_kwargs: dict) -> None:
    """Weight files named inside --model.model_kwargs would lose to the recipe's own options without a word."""
    for argument, role in WEIGHT_ARGUMENTS.get(arch, {}).items():
        if argument in model_kwargs:
            raise ValueError(f"--model.model_kwargs.{argument}: give weight files with --model.{role}_weights "
                             f"(model_kwargs is for the architecture's other arguments)")


def split_weight_arguments(arch: str, kwargs: dict, files: WeightFiles) -> WeightFiles:
    """Take weight paths out of `kwargs` (model_kwargs of older configs); paths already in `files` win."""
    roles = {role: getattr(files, role) for role in ("pretrained", "backbone", "landmark")}
    for argument, role in WEIGHT_ARGUMENTS.get(arch, {}).items():
        value = kwargs.pop(argument, None)
        roles[role] = roles[role] or value
    unused = [role for role in ("backbone", "landmark") if roles[role] and role not in WEIGHT_ARGUMENTS.get(arch, {}).values()]
    if unused:
        raise ValueError(f"--model.{unused[0]}_weights: {arch} has no {unused[0]} part to load; "
                         f"use --model.pretrained for a whole-model file")
    return WeightFiles(**{k: None if v is None else str(v) for k, v in roles.items()}, allow_pickle=files.allow_pickle)


def load_weights(model: nn.Module, arch: str, files: WeightFiles) -> None:
    """Load the local files in `files` into a model made by `build` (a part first, then a whole model)."""
    for role in ("pretrained", "backbone", "landmark"):
        path = getattr(files, role)
        if path and not Path(path).is_file():
            flag = "--model.pretrained" if role == "pretrained" else f"--model.{role}_weights"
            raise FileNotFoundError(f"{flag}: weights file not found: {path} (to start from random weights "
                                    f"instead, pass {flag} null)")
    if arch == "posterpp" and (files.backbone or files.landmark):
        model.load_pretrained_branches(files.backbone, files.landmark, allow_pickle=files.allow_pickle)
    if arch == "dan" and files.backbone:
        model.load_backbone(files.backbone, allow_pickle=files.allow_pickle)
    if files.pretrained:
        if arch in MODELS:
            model.load_official_checkpoint(files.pretrained, allow_pickle=files.allow_pickle)
        else:
            _load_timm_file(model, arch, files.pretrained)


def _load_timm_file(model: nn.Module, arch: str, path: str) -> None:
    """timm's own loading path (its key filters, head replacement for another class count), then copied in."""
    loaded = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": path},
                               num_classes=model.num_classes)
    model.load_state_dict(loaded.state_dict())


def _builder(arch: str) -> Callable[..., nn.Module]:
    module_name, _, function = MODELS[arch].partition(":")
    return getattr(importlib.import_module(module_name), function)
