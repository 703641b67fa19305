"""Loading pretrained weights from local files through an explicit key remapping, and parameter counting."""
from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

KeyRemap = Callable[[str], "str | None"] | Mapping[str, "str | None"]

# Wrappers seen in the wild: plain training scripts ("state_dict"), DAN ("model_state_dict"), timm/DeiT ("model").
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_SHOWN_KEYS = 10


@dataclass
class LoadReport:
    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.loaded) and not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (
            f"{self.path}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched, "
            f"{len(self.dropped)} dropped by the remap"
        )


def _first(items: Iterable[str], n: int = _SHOWN_KEYS) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


# Objects that official checkpoints pickle beside their tensors and that are safe to rebuild: the training
# script's argparse namespace (VideoMAE V2, and others saving `{'model': ..., 'args': args}`).
SAFE_GLOBALS = (argparse.Namespace,)


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> object:
    """Read a local .pth/.pt/.ckpt/.tar/.safetensors file onto the CPU.

    Pickled files are opened with ``weights_only=True``, which also admits the objects in SAFE_GLOBALS; any other
    pickled object is refused, because unpickling can execute code. ``allow_pickle=True`` lifts the restriction
    and must only be used for files from a trusted source.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a pickled {found.group(1)}" if found else "pickled objects"
        raise ValueError(
            f"{path}: holds {what} besides its tensors, which is refused because unpickling can run code. If the "
            "file comes from a trusted source, pass --model.allow_pickle true."
        ) from None


def extract_state_dict(checkpoint: object, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Unwrap the common checkpoint containers down to a flat ``name -> tensor`` dict."""
    obj = checkpoint
    while isinstance(obj, Mapping):
        nested = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: no state dict found (top-level object is {type(checkpoint).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: the state dict contains no tensors (keys: {_first(map(str, obj))})")
    return tensors


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` when every key carries it (DataParallel's ``module.``, Lightning's attribute name)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _as_callable(remap: KeyRemap | None) -> Callable[[str], str | None]:
    if remap is None:
        return lambda key: key
    if isinstance(remap, Mapping):
        table = dict(remap)
        return lambda key: table.get(key, key)
    return remap


def remap_state_dict(
    state_dict: Mapping[str, torch.Tensor], remap: KeyRemap | None, path: str | Path = "<checkpoint>"
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """Apply ``remap`` to every key; a ``None`` result drops the tensor.

    Returns (remapped tensors, dropped checkpoint keys, remapped key -> original checkpoint key).
    """
    fn = _as_callable(remap)
    remapped: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        new_key = fn(key)
        if new_key is None:
            dropped.append(key)
            continue
        if new_key in remapped:
            raise ValueError(f"{path}: keys {source_of[new_key]!r} and {key!r} both map to {new_key!r}")
        remapped[new_key] = value
        source_of[new_key] = key
    return remapped, dropped, source_of


def load_pretrained(
    module: nn.Module,
    path: str | Path,
    remap: KeyRemap | None = None,
    strict_prefixes: Iterable[str] | None = None,
    strip_prefixes: Iterable[str] = ("module.",),
    strict: bool = True,
    allow_pickle: bool = False,
    fit_or_drop: Iterable[str] = (),
) -> LoadReport:
    """Load weights from a local file into ``module`` after renaming checkpoint keys with ``remap``.

    Args:
        remap: callable or dict from checkpoint key to module key; ``None`` as a result drops that tensor, and a
            dict passes keys it does not list through unchanged.
        strict_prefixes: module keys that must all be provided. ``None`` means the whole module, which is right
            for a full checkpoint; a backbone file covers only e.g. ``("image_branch.",)``.
        strip_prefixes: wrapper prefixes removed when every key carries them.
        strict: raise ``ValueError`` on missing, unexpected or shape-mismatched keys. With ``strict=False`` the
            matching tensors are loaded and the problems are only reported.
        fit_or_drop: module key prefixes (e.g. a classifier ``head.``) whose checkpoint tensors load when their
            shapes fit and are dropped with a one-line notice when they do not (another task's classes).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file has no state dict, or (strict) its keys do not match, or nothing at all matched.
    """
    state_dict = extract_state_dict(read_checkpoint(path, allow_pickle=allow_pickle), path)
    for prefix in strip_prefixes:
        state_dict = strip_prefix(state_dict, prefix)
    remapped, dropped, source_of = remap_state_dict(state_dict, remap, path)

    own = module.state_dict()
    dropped += _drop_unfitting(remapped, own, tuple(fit_or_drop), path)
    prefixes = tuple(strict_prefixes) if strict_prefixes is not None else None
    required = [k for k in own if prefixes is None or k.startswith(prefixes)]
    report = LoadReport(path=str(path), dropped=dropped)
    report.missing = [k for k in required if k not in remapped]
    # name unexpected tensors as the file does too, since that is where a wrong remap rule is visible
    report.unexpected = [k if source_of[k] == k else f"{k} (checkpoint key {source_of[k]})"
                         for k in remapped if k not in own]
    report.mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in remapped.items() if k in own and v.shape != own[k].shape
    ]
    mismatched_keys = {k for k, _, _ in report.mismatched}
    loadable = {k: v for k, v in remapped.items() if k in own and k not in mismatched_keys}
    report.loaded = sorted(loadable)

    problems = report.missing or report.unexpected or report.mismatched
    if not loadable or (strict and problems):
        raise ValueError(_mismatch_message(module, report))
    module.load_state_dict(loadable, strict=False)
    return report


def _drop_unfitting(remapped: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], prefixes: tuple[str, ...],
                    path: str | Path) -> list[str]:
    """Remove (in place) the tensors under `prefixes` whose shape differs from the module's; their keys."""
    unfitting = [k for k, v in remapped.items() if prefixes and k.startswith(prefixes) and k in own
                 and v.shape != own[k].shape]
    if unfitting:
        from lightning.pytorch.utilities import rank_zero_info

        shapes = ", ".join(f"{k} {tuple(remapped[k].shape)} vs {tuple(own[k].shape)}" for k in unfitting)
        rank_zero_info(f"{path}: not loading {shapes}: it does not fit this model; it starts from random init")
    for key in unfitting:
        del remapped[key]
    return unfitting


def _mismatch_message(module: nn.Module, report: LoadReport) -> str:
    lines = [f"{report.path}: checkpoint does not match {type(module).__name__} ({report.summary()})"]
    if report.missing:
        lines.append(f"  missing in checkpoint: {_first(report.missing)}")
    if report.unexpected:
        lines.append(f"  unexpected in checkpoint (after remapping): {_first(report.unexpected)}")
    if report.mismatched:
        shown = [f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in report.mismatched]
        lines.append(f"  shape mismatch: {_first(shown)}")
    return "\n".join(lines)


def full_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def thop_style_param_count(model: nn.Module, *example_inputs: torch.Tensor) -> int:
    """Parameters as the ``thop`` profiler reports them in papers: only parameters owned by leaf modules.

    Parameters registered directly on a container (position embeddings, class tokens, layer-scale gammas,
    relative-position tables) are never counted. thop >= 0.1 counts a module inside a forward hook, so a leaf
    that exists but is never called contributes nothing; pass ``example_inputs`` to reproduce that (one forward
    in eval mode under ``no_grad``). Without inputs every leaf module is counted, as older thop releases did.
    """
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    if example_inputs:
        leaves = _leaves_called_in_forward(model, leaves, example_inputs)
    return sum(p.numel() for m in leaves for p in m.parameters())


def _leaves_called_in_forward(model: nn.Module, leaves: list[nn.Module], inputs: tuple) -> list[nn.Module]:
    called: dict[int, nn.Module] = {}

    def record(module: nn.Module, _inputs, _output) -> None:
        called[id(module)] = module

    handles = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return list(called.values())
