"""POSTER++ (POSTER V2; Mao et al., 2023) as a plain ``nn.Module``.

Data flow for a [N, 3, 224, 224] normalised face:

1. Resize to 112x112 once; both branches see the same small face.
2. Image branch: IR-50 stages 1-3 -> maps at 56/28/14 px (64/128/256 ch), each downsampled by a stride-2 conv
   to 28/14/7 px.
3. Landmark branch (frozen MobileFaceNet) -> maps at 28/14/7 px (64/128/512 ch); the 7 px map is reduced to
   256 ch by a 3x3 conv so every scale has matching widths.
4. Per scale, window-based cross-attention: the landmark map supplies the queries (no projection), the image
   map supplies keys and values; then a layer-scaled MLP. Window sizes equal the map sizes (28/14/7), so each
   scale is one window and the landmark query covers the whole map.
5. Each scale becomes 49 tokens of width 768 (two strided convs, one strided conv, a 1x1 conv); the 147 tokens
   plus a class token go through a 2-block ViT, an SE gate and the linear classifier.

Official checkpoints (``ir50.pth``, ``mobilefacenet_model_best.pth.tar`` and whole-model POSTER++ checkpoints)
load through ``posterpp_key_map()``, which lists the official module name for every module built here.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from common.weights import LoadReport, load_pretrained
from emotion.backbones import (
    IR50Trunk,
    MobileFaceNetTrunk,
    ModuleKeyMap,
    ir50_embedding_head,
    ir50_key_map,
    ir50_module_pairs,
    mobilefacenet_key_map,
    mobilefacenet_module_pairs,
)

BRANCH_SIZE = 112
SCALE_DIMS = (64, 128, 256)
SCALE_HEADS = (2, 4, 8)
WINDOW_SIZES = (28, 14, 7)
EMBED_DIM = 768
TOKENS_PER_SCALE = 49
FUSION_DEPTH = 2
FUSION_HEADS = 8


def relative_position_index(window: int) -> torch.Tensor:
    """[window^2, window^2] index into a (2w-1)^2 bias table, Swin-style (row offset major)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowCrossAttention(nn.Module):
    """Attention inside each window where keys/values come from the window and queries are given from outside.

    The same query set is used for every window (global query, as in GC-ViT), so it must have window^2 tokens.
    """

    def __init__(self, dim: int, num_heads: int, window: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.kv = nn.Linear(dim, 2 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # derived from the window size; kept out of the state dict
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """windows: [N * num_windows, w*w, C]; query: [N, w*w, C] -> [N * num_windows, w*w, C]."""
        tokens, dim = windows.shape[1], windows.shape[2]
        head_dim = dim // self.num_heads
        kv = self.kv(windows).reshape(-1, tokens, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        q = query.reshape(query.shape[0], 1, tokens, self.num_heads, head_dim).permute(0, 1, 3, 2, 4)
        windows_per_image = windows.shape[0] // query.shape[0]
        q = q.expand(-1, windows_per_image, -1, -1, -1).reshape(-1, self.num_heads, tokens, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.relative_position_bias().unsqueeze(0)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(-1, tokens, dim)
        return self.proj_drop(self.proj(out))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[N, H, W, C] -> [N * (H/w) * (W/w), w*w, C]."""
    _, h, w, c = x.shape
    x = x.reshape(-1, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``: [N * nW, w*w, C] -> [N, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class LandmarkCrossAttentionBlock(nn.Module):
    """One scale of the landmark-to-image fusion.

    The image map is layer-normed first and the *normed* map is the residual base (as in the official model);
    both residual branches are scaled by small learnable gammas so the block starts close to identity.
    """

    def __init__(self, dim: int, num_heads: int, window: int, drop_path: float, layer_scale: float, mlp_ratio=4.0):
        super().__init__()
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.attn = WindowCrossAttention(dim, num_heads, window)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.gamma_attn = nn.Parameter(torch.full((dim,), layer_scale))
        self.gamma_mlp = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, image: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """image, landmarks: [N, C, H, W] (landmarks must have window^2 positions) -> [N, C, H, W]."""
        h, w = image.shape[-2:]
        x = self.norm(image.permute(0, 2, 3, 1))
        query = landmarks.flatten(2).transpose(1, 2)
        attended = self.attn(window_partition(x, self.window), query)
        x = x + self.drop_path(self.gamma_attn * window_merge(attended, self.window, h, w))
        x = x + self.drop_path(self.gamma_mlp * self.mlp(self.mlp_norm(x)))
        return x.permute(0, 3, 1, 2)


class SEGate(nn.Module):
    """Feature-wise sigmoid gate computed from the feature itself."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x))))


class PyramidFusionTransformer(nn.Module):
    """Class token + learned positions over the concatenated multi-scale tokens, then SE gate and classifier."""

    def __init__(self, num_tokens: int, num_classes: int, dim: int = EMBED_DIM, depth: int = FUSION_DEPTH,
                 num_heads: int = FUSION_HEADS, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.pos_drop = nn.Dropout(0.0)
        rates = torch.linspace(0, drop_path, depth).tolist()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=norm)
                                      for r in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.se_gate = SEGate(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        x = self.norm(self.blocks(x))
        return self.head(self.se_gate(x[:, 0]))


def _scale_tokenizers(dim: int = EMBED_DIM) -> nn.ModuleList:
    """Map the 28/14/7 px fused maps to 7x7 grids of ``dim``-wide tokens."""
    return nn.ModuleList(
        [
            nn.Sequential(nn.Conv2d(SCALE_DIMS[0], dim, 3, 2, 1), nn.Conv2d(dim, dim, 3, 2, 1)),
            nn.Sequential(nn.Conv2d(SCALE_DIMS[1], dim, 3, 2, 1)),
            nn.Sequential(nn.Conv2d(SCALE_DIMS[2], dim, 1)),
        ]
    )


def _unused_official_modules(num_tokens: int) -> nn.ModuleDict:
    """Modules the official POSTER++ builds but never calls: the face-recognition head of IR-50 and leftovers
    in its ViT, 14.47 M parameters in all. The published 43.7 M comes from thop, which counts parameters in
    forward hooks and so leaves these out; with them a leaf-module count is 58.2 M. They exist here only to
    mirror the official module tree (e.g. to round-trip an official checkpoint without dropping tensors)."""
    modules: OrderedDict[str, nn.Module] = OrderedDict(
        ir50_embedding_head=ir50_embedding_head(),
        vit_patch_embed=nn.Conv2d(256, EMBED_DIM, 1),
        vit_eca_conv=nn.Conv1d(1, 1, 5, padding=2, bias=False),
        vit_con1=nn.Conv2d(256, EMBED_DIM, 1, bias=False),
        vit_ir_linear1=nn.Linear(1024, EMBED_DIM),
        vit_ir_linear2=nn.Linear(EMBED_DIM, 512),
    )
    for i in range(FUSION_DEPTH):
        modules[f"vit_block{i}_token_conv"] = nn.Conv1d(num_tokens + 1, num_tokens + 1, 1)
    return nn.ModuleDict(modules)


class PosterPP(nn.Module):
    """POSTER++ facial-expression classifier; ``forward`` maps [N, 3, H, W] normalised faces to [N, C] logits.

    Args:
        num_classes: output classes (7 for RAF-DB / AffectNet-7, 8 for AffectNet-8).
        drop_path_rate: the official code spreads stochastic depth linearly over 5 slots from 0 to this value
            and uses the first three for the three fusion scales (0, 0.125, 0.25 at the default 0.5).
        layer_scale_init: initial value of the fusion blocks' residual gammas.
        resize_mode: interpolation used to bring the input to 112x112. The official code uses ``nearest``;
            ``bilinear`` (default) is smoother for 224 inputs. Use ``nearest`` to reproduce official checkpoints
            exactly.
        keep_unused_official_modules: also build the never-called official modules (see
            ``_unused_official_modules``). Off by default: they do not take part in the published 43.7 M, only
            cost memory, and would leave gradient-less parameters for DDP to trip over.
        ir50_weights / landmark_weights: optional local paths to ``ir50.pth`` and
            ``mobilefacenet_model_best.pth.tar``; loaded strictly at construction.
        allow_pickle: forwarded to the checkpoint reader for files that pickle more than tensors.
    """

    def __init__(
        self,
        num_classes: int = 7,
        *,
        drop_path_rate: float = 0.5,
        layer_scale_init: float = 1e-5,
        resize_mode: str = "bilinear",
        keep_unused_official_modules: bool = False,
        ir50_weights: str | Path | None = None,
        landmark_weights: str | Path | None = None,
        allow_pickle: bool = False,
    ):
        super().__init__()
        if resize_mode not in ("bilinear", "nearest"):
            raise ValueError(f"resize_mode must be 'bilinear' or 'nearest', got {resize_mode!r}")
        self.num_classes = num_classes
        self.resize_mode = resize_mode
        self.image_branch = IR50Trunk()
        self.landmark_branch = MobileFaceNetTrunk()
        self.landmark_branch.requires_grad_(False)
        self.landmark_reduce = nn.Conv2d(512, SCALE_DIMS[2], 3, padding=1)
        self.image_downsample = nn.ModuleList([nn.Conv2d(d, d, 3, 2, 1) for d in SCALE_DIMS])
        rates = torch.linspace(0, drop_path_rate, 5).tolist()
        self.cross_attention = nn.ModuleList(
            [
                LandmarkCrossAttentionBlock(dim, heads, window, rates[i], layer_scale_init)
                for i, (dim, heads, window) in enumerate(zip(SCALE_DIMS, SCALE_HEADS, WINDOW_SIZES))
            ]
        )
        self.tokenizers = _scale_tokenizers()
        num_tokens = TOKENS_PER_SCALE * len(SCALE_DIMS)
        self.fusion = PyramidFusionTransformer(num_tokens, num_classes)
        if keep_unused_official_modules:
            self.unused_official = _unused_official_modules(num_tokens)
        self.landmark_branch.eval()
        if ir50_weights is not None or landmark_weights is not None:
            self.load_pretrained_branches(ir50_weights, landmark_weights, allow_pickle=allow_pickle)

    def train(self, mode: bool = True) -> PosterPP:
        super().train(mode)
        # the landmark detector is a fixed feature extractor: its BatchNorm statistics must not drift
        self.landmark_branch.eval()
        return self

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        # no shortcut for inputs already at 112: resizing to the same size is exact, and a shape test would be
        # frozen into traced/exported graphs
        if self.resize_mode == "nearest":
            return F.interpolate(x, size=(BRANCH_SIZE, BRANCH_SIZE), mode="nearest")
        return F.interpolate(x, size=(BRANCH_SIZE, BRANCH_SIZE), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        faces = self._resize(x)
        lm28, lm14, lm7 = self.landmark_branch(faces)
        landmark_maps = (lm28, lm14, self.landmark_reduce(lm7))
        image_maps = self.image_branch(faces)
        tokens = []
        for i in range(len(SCALE_DIMS)):
            image = self.image_downsample[i](image_maps[i])
            fused = self.cross_attention[i](image, landmark_maps[i])
            tokens.append(self.tokenizers[i](fused).flatten(2).transpose(1, 2))
        return self.fusion(torch.cat(tokens, dim=1))

    # ---------------------------------------------------------------------------------------------------------
    # Pretrained weights
    # ---------------------------------------------------------------------------------------------------------

    def load_pretrained_branches(
        self,
        ir50_path: str | Path | None = None,
        mobilefacenet_path: str | Path | None = None,
        allow_pickle: bool = False,
    ) -> list[LoadReport]:
        """Load the MS-Celeb IR-50 and/or the landmark MobileFaceNet from their official files."""
        reports = []
        if ir50_path is not None:
            remap = prefixed(ir50_backbone_remap, "image_branch.")
            reports.append(load_pretrained(self, ir50_path, remap, strict_prefixes=("image_branch.",),
                                           allow_pickle=allow_pickle))
        if mobilefacenet_path is not None:
            remap = prefixed(mobilefacenet_key_map(), "landmark_branch.")
            reports.append(load_pretrained(self, mobilefacenet_path, remap, strict_prefixes=("landmark_branch.",),
                                           allow_pickle=allow_pickle))
        return reports

    def load_official_checkpoint(self, path: str | Path, allow_pickle: bool = False) -> LoadReport:
        """Load a whole official POSTER++ checkpoint (e.g. ``raf-db-model_best.pth``)."""
        key_map = posterpp_key_map(include_unused=hasattr(self, "unused_official"))
        return load_pretrained(self, path, key_map, allow_pickle=allow_pickle)


def prefixed(remap: Callable[[str], str | None], prefix: str) -> Callable[[str], str | None]:
    """Wrap a remap for a sub-module so that its results are keys of the enclosing model."""
    def remap_with_prefix(key: str) -> str | None:
        new_key = remap(key)
        return None if new_key is None else prefix + new_key
    return remap_with_prefix


def ir50_backbone_remap(key: str) -> str | None:
    """Accept both the POSTER++ layout (``body1.N``/``body2.N``/``body3.N``) and the original flat ``body.N``."""
    return ir50_key_map(flat_body=key.startswith("body."))(key)


def posterpp_module_pairs(include_unused: bool = False) -> list[tuple[str, str]]:
    """Every module of ``PosterPP`` paired with its name in the official ``pyramid_trans_expr2``."""
    image = ModuleKeyMap(ir50_module_pairs()).with_prefixes("ir_back", "image_branch")
    landmark = ModuleKeyMap(mobilefacenet_module_pairs()).with_prefixes("face_landback", "landmark_branch")
    pairs = [*image.to_ours.items(), *landmark.to_ours.items()]
    pairs.append(("last_face_conv", "landmark_reduce"))
    for i in range(len(SCALE_DIMS)):
        n = i + 1
        ours = f"cross_attention.{i}"
        pairs += [
            (f"conv{n}", f"image_downsample.{i}"),
            (f"window{n}.norm", f"{ours}.norm"),
            (f"attn{n}", f"{ours}.attn"),
            (f"attn{n}.qkv", f"{ours}.attn.kv"),
            (f"attn{n}.proj", f"{ours}.attn.proj"),
            (f"ffn{n}.gamma1", f"{ours}.gamma_attn"),
            (f"ffn{n}.gamma2", f"{ours}.gamma_mlp"),
            (f"ffn{n}.norm", f"{ours}.mlp_norm"),
            (f"ffn{n}.mlp.fc1", f"{ours}.mlp.fc1"),
            (f"ffn{n}.mlp.fc2", f"{ours}.mlp.fc2"),
        ]
    pairs += [("embed_q.0", "tokenizers.0.0"), ("embed_q.1", "tokenizers.0.1"),
              ("embed_k.0", "tokenizers.1.0"), ("embed_v.proj", "tokenizers.2.0")]
    pairs.append(("VIT", "fusion"))
    for b in range(FUSION_DEPTH):
        for official, ours in (("norm1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"),
                               ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            pairs.append((f"VIT.blocks.{b}.{official}", f"fusion.blocks.{b}.{ours}"))
    pairs += [("VIT.norm", "fusion.norm"), ("VIT.se_block.linear1", "fusion.se_gate.fc1"),
              ("VIT.se_block.linear2", "fusion.se_gate.fc2"), ("VIT.head.linear", "fusion.head")]
    if include_unused:
        pairs += [
            ("ir_back.output_layer.0", "unused_official.ir50_embedding_head.norm2d"),
            ("ir_back.output_layer.3", "unused_official.ir50_embedding_head.fc"),
            ("ir_back.output_layer.4", "unused_official.ir50_embedding_head.norm1d"),
            ("VIT.patch_embed.proj", "unused_official.vit_patch_embed"),
            ("VIT.eca_block.conv", "unused_official.vit_eca_conv"),
            ("VIT.CON1", "unused_official.vit_con1"),
            ("VIT.IRLinear1", "unused_official.vit_ir_linear1"),
            ("VIT.IRLinear2", "unused_official.vit_ir_linear2"),
        ]
        pairs += [(f"VIT.blocks.{b}.conv", f"unused_official.vit_block{b}_token_conv") for b in range(FUSION_DEPTH)]
    return pairs


def posterpp_key_map(include_unused: bool = False) -> ModuleKeyMap:
    """Official POSTER++ state-dict keys <-> ``PosterPP`` keys.

    The relative-position index buffers are recomputed here rather than loaded; without the unused modules
    their official tensors are dropped as well.
    """
    dropped = [f"attn{n}.relative_position_index" for n in range(1, len(SCALE_DIMS) + 1)]
    if not include_unused:
        dropped += ["ir_back.output_layer", "VIT.patch_embed", "VIT.eca_block", "VIT.CON1", "VIT.IRLinear1",
                    "VIT.IRLinear2"] + [f"VIT.blocks.{b}.conv" for b in range(FUSION_DEPTH)]
    return ModuleKeyMap(posterpp_module_pairs(include_unused), dropped)
