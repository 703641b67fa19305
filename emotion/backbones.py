"""Convolutional trunks used by the emotion models, plus the small pieces they share.

* ``IR50Trunk``: the first three stages of the ArcFace IR-50 (POSTER++ image branch).
* ``MobileFaceNetTrunk``: the 136-landmark MobileFaceNet (POSTER++ landmark branch).
* ``ResNet18Trunk``: torchvision-layout ResNet-18 without pooling/fc (DAN backbone).

Each trunk comes with a ``*_module_pairs()`` function that lists, module by module, how the official
checkpoint names correspond to the names used here. ``ModuleKeyMap`` turns such a list into a two-way
state-dict key translator, so loading official weights is an explicit, checkable renaming.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from functools import lru_cache

import torch
from torch import nn

# --------------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------------


class ConvNormAct(nn.Sequential):
    """conv -> BatchNorm -> optional activation; the activation is omitted for linear bottleneck projections."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
        bias: bool = False,
        act: nn.Module | None = None,
    ):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=bias)
        layers["norm"] = nn.BatchNorm2d(out_ch)
        if act is not None:
            layers["act"] = act
        super().__init__(layers)


class ModuleKeyMap:
    """Two-way translation of state-dict keys, driven by a table of ``official module path -> our module path``.

    A state-dict key is ``<module path>.<tensor name>``; normally only the module path is renamed, so buffers
    such as ``num_batches_tracked`` follow their module for free. A pair may also name a full key, for tensors
    that change their own name (an exact key match is tried before the module path).
    Keys whose module path is listed in ``dropped`` (official modules we deliberately do not build) map to
    ``None``; any other unknown key is returned unchanged so that it surfaces as "unexpected" when loading.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]], dropped: Iterable[str] = ()):
        self.to_ours: dict[str, str] = {}
        self.to_official: dict[str, str] = {}
        for official, ours in pairs:
            if official in self.to_ours or ours in self.to_official:
                raise ValueError(f"module path listed twice in key map: {official!r} / {ours!r}")
            self.to_ours[official] = ours
            self.to_official[ours] = official
        self.dropped = tuple(dropped)

    @staticmethod
    def _split(key: str) -> tuple[str, str]:
        module_path, _, tensor_name = key.rpartition(".")
        return module_path, tensor_name

    def _is_dropped(self, official_key: str) -> bool:
        return any(official_key == d or official_key.startswith(d + ".") for d in self.dropped)

    def __call__(self, official_key: str) -> str | None:
        if self._is_dropped(official_key):
            return None
        if official_key in self.to_ours:
            return self.to_ours[official_key]
        module_path, tensor_name = self._split(official_key)
        if module_path in self.to_ours:
            return f"{self.to_ours[module_path]}.{tensor_name}"
        return official_key

    def inverse(self, our_key: str) -> str:
        if our_key in self.to_official:
            return self.to_official[our_key]
        module_path, tensor_name = self._split(our_key)
        if module_path not in self.to_official:
            raise KeyError(f"no official name is known for {our_key!r}")
        return f"{self.to_official[module_path]}.{tensor_name}"

    def with_prefixes(self, official_prefix: str, our_prefix: str) -> ModuleKeyMap:
        """The same map for a trunk that sits inside a bigger model on both sides."""
        pairs = [(_join(official_prefix, o), _join(our_prefix, w)) for o, w in self.to_ours.items()]
        return ModuleKeyMap(pairs, [_join(official_prefix, d) for d in self.dropped])

def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    return f"{prefix}.{path}" if path else prefix


def _conv_norm_act_pairs(official: str, ours: str, names: Mapping[str, str]) -> list[tuple[str, str]]:
    """Pairs for one ``ConvNormAct``; ``names`` gives the official child name of each of its parts."""
    return [(f"{official}.{official_name}", f"{ours}.{part}") for part, official_name in names.items()]


# --------------------------------------------------------------------------------------------------------------
# IR-50 (ArcFace "improved residual" blocks), first three stages
# --------------------------------------------------------------------------------------------------------------


class IRBlock(nn.Module):
    """BN-conv-PReLU-conv-BN residual unit; the stride sits on the second conv as in the ArcFace IR design."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if in_ch == out_ch:
            # a 1x1 max-pool with stride is pure subsampling, so the identity path needs no weights
            self.shortcut: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut = ConvNormAct(in_ch, out_ch, 1, stride)
        self.pre_norm = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.act = nn.PReLU(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False)
        self.post_norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.post_norm(self.conv2(self.act(self.conv1(self.pre_norm(x)))))
        return residual + self.shortcut(x)


def _ir_stage(in_ch: int, out_ch: int, num_units: int) -> nn.Sequential:
    units = [IRBlock(in_ch, out_ch, 2)] + [IRBlock(out_ch, out_ch, 1) for _ in range(num_units - 1)]
    return nn.Sequential(*units)


IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14))
IR50_STAGE_CHANNELS = tuple(out for _, out, _ in IR50_STAGES)


class IR50Trunk(nn.Module):
    """IR-50 stem and stages 1-3; for a 112x112 face it returns maps at 56, 28 and 14 pixels (64/128/256 ch).

    The fourth stage is never built (POSTER++ stops at stage 3).
    """

    def __init__(self):
        super().__init__()
        self.stem = ConvNormAct(3, 64, 3, 1, 1, act=nn.PReLU(64))
        self.stage1 = _ir_stage(*IR50_STAGES[0])
        self.stage2 = _ir_stage(*IR50_STAGES[1])
        self.stage3 = _ir_stage(*IR50_STAGES[2])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        return s1, s2, s3


def ir50_embedding_head() -> nn.Sequential:
    """The face-recognition embedding head of IR-50 (BN, dropout, flatten, 25088->512, BN).

    POSTER++ instantiates it although its forward never calls it; it is built only to keep parameter counts
    and checkpoint layouts identical to the official model.
    """
    return nn.Sequential(
        OrderedDict(
            norm2d=nn.BatchNorm2d(512),
            dropout=nn.Dropout(0.0),
            flatten=nn.Flatten(),
            fc=nn.Linear(512 * 7 * 7, 512),
            norm1d=nn.BatchNorm1d(512),
        )
    )


def _ir_block_pairs(official: str, ours: str, projection: bool) -> list[tuple[str, str]]:
    pairs = [
        (f"{official}.res_layer.0", f"{ours}.pre_norm"),
        (f"{official}.res_layer.1", f"{ours}.conv1"),
        (f"{official}.res_layer.2", f"{ours}.act"),
        (f"{official}.res_layer.3", f"{ours}.conv2"),
        (f"{official}.res_layer.4", f"{ours}.post_norm"),
    ]
    if projection:
        pairs += [(f"{official}.shortcut_layer.0", f"{ours}.shortcut.conv"),
                  (f"{official}.shortcut_layer.1", f"{ours}.shortcut.norm")]
    return pairs


def ir50_module_pairs(flat_body: bool = False) -> list[tuple[str, str]]:
    """Official IR-50 module paths -> ``IR50Trunk`` paths.

    POSTER++'s ``Backbone`` names its stages ``body1/body2/body3``; the original IR-50 (face.evoLVe, POSTER v1)
    keeps all units in one ``body`` list. ``flat_body`` selects the second layout.
    """
    pairs = _conv_norm_act_pairs("input_layer", "stem", {"conv": "0", "norm": "1", "act": "2"})
    flat_index = 0
    for stage_idx, (in_ch, out_ch, num_units) in enumerate(IR50_STAGES, start=1):
        for unit in range(num_units):
            official = f"body.{flat_index}" if flat_body else f"body{stage_idx}.{unit}"
            projection = unit == 0 and in_ch != out_ch
            pairs += _ir_block_pairs(official, f"stage{stage_idx}.{unit}", projection)
            flat_index += 1
    return pairs


@lru_cache(maxsize=None)
def ir50_key_map(flat_body: bool = False) -> ModuleKeyMap:
    """Key map for a stand-alone IR-50 checkpoint; the embedding head and stage 4 are not part of the trunk."""
    dropped = ["output_layer"]
    if flat_body:
        # units 21-23 form stage 4 in the original 24-unit body
        dropped += [f"body.{i}" for i in range(21, 24)]
    return ModuleKeyMap(ir50_module_pairs(flat_body), dropped)


# --------------------------------------------------------------------------------------------------------------
# MobileFaceNet (landmark detector, 136 outputs = 68 (x, y) points)
# --------------------------------------------------------------------------------------------------------------


class InvertedBottleneck(nn.Module):
    """1x1 expand -> depthwise kxk -> linear 1x1 projection, with an optional identity residual."""

    def __init__(self, in_ch: int, out_ch: int, hidden_ch: int, stride: int = 1, residual: bool = False):
        super().__init__()
        self.expand = ConvNormAct(in_ch, hidden_ch, 1, act=nn.PReLU(hidden_ch))
        self.depthwise = ConvNormAct(hidden_ch, hidden_ch, 3, stride, 1, groups=hidden_ch, act=nn.PReLU(hidden_ch))
        self.project = ConvNormAct(hidden_ch, out_ch, 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


def _residual_stage(ch: int, hidden_ch: int, num_blocks: int) -> nn.Sequential:
    return nn.Sequential(*[InvertedBottleneck(ch, ch, hidden_ch, residual=True) for _ in range(num_blocks)])


# (down-sampling block: in, out, hidden) and (residual stage: channels, hidden, blocks)
MOBILEFACENET_LAYOUT = (
    ((64, 64, 128), (64, 128, 4)),
    ((64, 128, 256), (128, 256, 6)),
    ((128, 128, 512), (128, 256, 2)),
)


class LandmarkHead(nn.Module):
    """Global depthwise 7x7 conv -> linear -> BN regression head producing the 136 landmark coordinates."""

    def __init__(self, num_outputs: int = 136):
        super().__init__()
        self.depthwise = ConvNormAct(512, 512, 7, groups=512)
        self.linear = nn.Linear(512, num_outputs, bias=False)
        self.norm = nn.BatchNorm1d(num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.depthwise(x).flatten(1)))


class MobileFaceNetTrunk(nn.Module):
    """MobileFaceNet for 112x112 faces; returns maps at 28 (64 ch), 14 (128 ch) and 7 pixels (512 ch).

    The landmark regression head is kept (the pretrained checkpoint contains it and ``landmarks()`` exposes it)
    but the multi-scale forward does not need it.
    """

    def __init__(self, num_landmark_outputs: int = 136):
        super().__init__()
        self.stem = ConvNormAct(3, 64, 3, 2, 1, act=nn.PReLU(64))
        self.stem_dw = ConvNormAct(64, 64, 3, 1, 1, groups=64, act=nn.PReLU(64))
        (d1, s1), (d2, s2), (d3, s3) = MOBILEFACENET_LAYOUT
        self.down1 = InvertedBottleneck(d1[0], d1[1], d1[2], stride=2)
        self.stage1 = _residual_stage(*s1)
        self.down2 = InvertedBottleneck(d2[0], d2[1], d2[2], stride=2)
        self.stage2 = _residual_stage(*s2)
        self.down3 = InvertedBottleneck(d3[0], d3[1], d3[2], stride=2)
        self.stage3 = _residual_stage(*s3)
        self.widen = ConvNormAct(128, 512, 1, act=nn.PReLU(512))
        self.landmark_head = LandmarkHead(num_landmark_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem_dw(self.stem(x))
        f28 = self.stage1(self.down1(x))
        f14 = self.stage2(self.down2(f28))
        f7 = self.widen(self.stage3(self.down3(f14)))
        return f28, f14, f7

    def landmarks(self, x: torch.Tensor) -> torch.Tensor:
        return self.landmark_head(self.forward(x)[-1])


def _mfn_block_pairs(official: str, ours: str) -> list[tuple[str, str]]:
    names = {"conv": "conv", "norm": "bn", "act": "prelu"}
    return (
        _conv_norm_act_pairs(f"{official}.conv", f"{ours}.expand", names)
        + _conv_norm_act_pairs(f"{official}.conv_dw", f"{ours}.depthwise", names)
        + _conv_norm_act_pairs(f"{official}.project", f"{ours}.project", {"conv": "conv", "norm": "bn"})
    )


def mobilefacenet_module_pairs() -> list[tuple[str, str]]:
    names = {"conv": "conv", "norm": "bn", "act": "prelu"}
    pairs = _conv_norm_act_pairs("conv1", "stem", names)
    pairs += _conv_norm_act_pairs("conv2_dw", "stem_dw", names)
    official_stages = (("conv_23", "conv_3"), ("conv_34", "conv_4"), ("conv_45", "conv_5"))
    for idx, ((down, stage), (_, (_, _, num_blocks))) in enumerate(zip(official_stages, MOBILEFACENET_LAYOUT), 1):
        pairs += _mfn_block_pairs(down, f"down{idx}")
        for b in range(num_blocks):
            pairs += _mfn_block_pairs(f"{stage}.model.{b}", f"stage{idx}.{b}")
    pairs += _conv_norm_act_pairs("conv_6_sep", "widen", names)
    pairs += _conv_norm_act_pairs("output_layer.conv_6_dw", "landmark_head.depthwise", {"conv": "conv", "norm": "bn"})
    pairs += [("output_layer.linear", "landmark_head.linear"), ("output_layer.bn", "landmark_head.norm")]
    return pairs


@lru_cache(maxsize=None)
def mobilefacenet_key_map() -> ModuleKeyMap:
    return ModuleKeyMap(mobilefacenet_module_pairs())


# --------------------------------------------------------------------------------------------------------------
# ResNet-18 (torchvision layout, no global pool / fc)
# --------------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or in_ch != out_ch
        self.shortcut: nn.Module = ConvNormAct(in_ch, out_ch, 1, stride) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


RESNET18_STAGES = ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2))


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to ``layer4``: [N, 3, 224, 224] -> [N, 512, 7, 7]."""

    out_channels = 512

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                norm=nn.BatchNorm2d(64),
                act=nn.ReLU(inplace=True),
                pool=nn.MaxPool2d(3, 2, 1),
            )
        )
        for idx, (in_ch, out_ch, stride) in enumerate(RESNET18_STAGES, start=1):
            self.add_module(f"stage{idx}", nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch)))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for idx in range(1, len(RESNET18_STAGES) + 1):
            x = getattr(self, f"stage{idx}")(x)
        return x


def resnet18_module_pairs(stem: tuple[str, str] = ("conv1", "bn1"), stage_names: tuple[str, ...] | None = None):
    """torchvision ResNet-18 module paths -> ``ResNet18Trunk`` paths.

    ``stem`` and ``stage_names`` let the same table describe DAN's ``features.N`` re-wrapping of torchvision.
    """
    stage_names = stage_names or tuple(f"layer{i}" for i in range(1, 5))
    pairs = [(stem[0], "stem.conv"), (stem[1], "stem.norm")]
    for idx, (official_stage, (in_ch, out_ch, stride)) in enumerate(zip(stage_names, RESNET18_STAGES), start=1):
        for b in range(2):
            official, ours = f"{official_stage}.{b}", f"stage{idx}.{b}"
            pairs += [(f"{official}.conv1", f"{ours}.conv1"), (f"{official}.bn1", f"{ours}.norm1"),
                      (f"{official}.conv2", f"{ours}.conv2"), (f"{official}.bn2", f"{ours}.norm2")]
            if b == 0 and (stride != 1 or in_ch != out_ch):
                pairs += [(f"{official}.downsample.0", f"{ours}.shortcut.conv"),
                          (f"{official}.downsample.1", f"{ours}.shortcut.norm")]
    return pairs


@lru_cache(maxsize=None)
def resnet18_key_map() -> ModuleKeyMap:
    """Key map for a torchvision-layout ResNet-18 checkpoint such as DAN's ``resnet18_msceleb.pth``."""
    return ModuleKeyMap(resnet18_module_pairs(), dropped=["fc"])
