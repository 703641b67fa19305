"""Emotion architectures by name: the project's own (POSTER++, DAN) or any timm model as a baseline."""
from __future__ import annotations

import importlib
from typing import Callable

import timm
from torch import nn

# name -> "module:function" building the model from (num_classes, **kwargs); imported only when asked for.
MODELS: dict[str, str] = {
    "posterpp": "emotion.posterpp:create_posterpp",
    "dan": "emotion.dan:create_dan",
}


def create_model(arch: str, num_classes: int, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build `arch` with `num_classes` outputs; `pretrained` is a local weights file (nothing is downloaded)."""
    if arch in MODELS:
        return _builder(arch)(num_classes=num_classes, pretrained=pretrained, **kwargs)
    if not timm.is_model(arch):
        raise ValueError(f"unknown emotion arch {arch!r}: use one of {sorted(MODELS)} or a timm model name")
    overlay = {"file": pretrained} if pretrained else None
    if pretrained:
        _require_file(pretrained)
    return timm.create_model(arch, pretrained=bool(pretrained), pretrained_cfg_overlay=overlay,
                             num_classes=num_classes, **kwargs)


def _builder(arch: str) -> Callable[..., nn.Module]:
    module_name, _, function = MODELS[arch].partition(":")
    return getattr(importlib.import_module(module_name), function)


def _require_file(path: str) -> None:
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"--model.pretrained: no such weights file: {path}")
