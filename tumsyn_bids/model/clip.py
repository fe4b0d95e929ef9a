"""TUMSyn's stage-1 CLIP: a 3-D image tower trained contrastively against the text tower.

Inference only needs the text tower (:mod:`.text_encoder`); training it needs a partner that
embeds images into the same space. The authors use CLIP's "ModifiedResNet" made 3-D: a three-conv
stem, anti-aliased bottleneck blocks (an average pool replaces every strided convolution) and an
attention pool whose query is the mean feature. Parameter names follow the authors' classes, so
:class:`ContrastiveModel`'s state dict has exactly the keys of the published
``checkpoint_CLIP.pt`` (``visual.*``, the text keys and ``logit_scale``) and either can be loaded
into the other's code.

Arrays are in the authors' (z, y, x) order; nothing here knows about BIDS.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .text_encoder import TextEncoder, TextEncoderConfig

#: CLIP starts the learned temperature at 0.07 and never lets the logit multiplier exceed 100.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)

#: Bottleneck blocks widen their input by this factor (as in torchvision's ResNet-50).
EXPANSION = 4


@dataclass(frozen=True)
class ImageTowerConfig:
    """Sizes of the 3-D image tower. The attention-pool head count follows from the width.

    The published ``checkpoint_CLIP.pt`` was built with ``image_size=120, width=256``; the
    authors' training config says ``image_size=128, width=128``.
    """

    image_size: int = 128
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 128
    embed_dim: int = 768

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"need four positive block counts, got {self.layers}")
        if self.width < 2 or self.width % 2:
            raise ValueError(f"the image tower width must be even, got {self.width}")
        if self.image_size < 32:
            raise ValueError(f"images must be at least 32 voxels wide, got {self.image_size}")
        if feature_grid(self.image_size) != self.grid:
            # The attention pool's positional embedding is sized image_size // 32 (as the authors
            # size it); sizes that round differently through the five halvings cannot run.
            raise ValueError(
                f"image size {self.image_size} gives a {feature_grid(self.image_size)}^3 feature "
                f"grid, but the attention pool expects {self.grid}^3; use a multiple of 32 or a "
                "size such as 120"
            )

    @property
    def heads(self) -> int:
        """The authors' choice: one 64-channel head per 64 channels of the last feature map."""
        return self.width * 32 // 64

    @property
    def feature_dim(self) -> int:
        return self.width * 8 * EXPANSION

    @property
    def grid(self) -> int:
        return self.image_size // 32

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


def feature_grid(size: int) -> int:
    """Side of the last feature map for a cube of ``size`` voxels (stride-2 conv, four pools)."""
    size = (size - 1) // 2 + 1
    for _ in range(4):
        size //= 2
    return size


class Bottleneck3d(nn.Module):
    """1-3-1 bottleneck; a stride is an average pool after the 3x3x3 conv (anti-aliasing)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.avgpool = nn.AvgPool3d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv3d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != out:
            # The authors name the pool "-1" so that the conv and norm keep torchvision's "0"/"1".
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool3d(stride)),
                        ("0", nn.Conv3d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm3d(out)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class AttentionPool3d(nn.Module):
    """Multi-head attention of the mean feature over every voxel of the last feature map."""

    def __init__(self, grid: int, dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid**3 + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)
        self.num_heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).permute(2, 0, 1)  # [N, C, z, y, x] -> [zyx, N, C]
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        tokens = tokens + self.positional_embedding[:, None, :].to(tokens.dtype)
        # Only the mean token's output is kept, so only it needs to be a query (the authors
        # attend from every token and drop all but the first; the result is the same).
        out, _ = F.multi_head_attention_forward(
            query=tokens[:1],
            key=tokens,
            value=tokens,
            embed_dim_to_check=tokens.shape[-1],
            num_heads=self.num_heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            training=self.training,
            need_weights=False,
            use_separate_proj_weight=True,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
        )
        return out[0]


class ModifiedResNet3d(nn.Module):
    """``[N, 1, S, S, S]`` percentile-normalised cubes -> ``[N, embed_dim]`` image embeddings."""

    def __init__(self, config: ImageTowerConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.conv1 = nn.Conv3d(1, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(w // 2)
        self.conv2 = nn.Conv3d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(w // 2)
        self.conv3 = nn.Conv3d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm3d(w)
        self.avgpool = nn.AvgPool3d(2)
        self.relu = nn.ReLU(inplace=True)
        inplanes = w
        stages = []
        for i, blocks in enumerate(config.layers):
            planes = w * 2**i
            stride = 1 if i == 0 else 2
            stage = [Bottleneck3d(inplanes, planes, stride)]
            inplanes = planes * EXPANSION
            stage += [Bottleneck3d(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool3d(
            config.grid, config.feature_dim, config.heads, config.embed_dim
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class ContrastiveModel(TextEncoder):
    """The authors' ``CLIP``: the text tower plus ``visual`` and the learned ``logit_scale``.

    Subclassing :class:`TextEncoder` keeps the text keys at the top level, as in the published
    file, so the text half of a trained model loads with :func:`.checkpoints.load_text_encoder`.
    """

    def __init__(self, text: TextEncoderConfig, image: ImageTowerConfig) -> None:
        if text.embed_dim != image.embed_dim:
            raise ValueError(
                f"text ({text.embed_dim}) and image ({image.embed_dim}) embeddings must have the "
                "same size"
            )
        super().__init__(text)
        self.image_config = image
        self.visual = ModifiedResNet3d(image)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT, dtype=torch.float32))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """CLIP's initialisation, which the authors kept.

        Zero ``bn3`` weights make every residual block start as its shortcut (a well-conditioned
        start for deep ResNets); the transformer's output projections shrink with depth so the
        residual stream does not grow with the number of layers.
        """
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        pool = self.visual.attnpool
        std = pool.c_proj.in_features**-0.5
        for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        v = self.visual
        for stage in (v.layer1, v.layer2, v.layer3, v.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)
        width, layers = self.config.width, self.config.layers
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=attn_std)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return TextEncoder.forward(self, tokens)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ``(image_features, text_features)``, as the authors' ``CLIP.forward``."""
        return self.encode_image(images), self.encode_text(tokens)

    def sizes(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (stored in checkpoints)."""
        return {"image": self.image_config.to_dict(), "text": self.config.to_dict()}


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric cross-entropy; row ``i`` of each input is a matching pair.

    ``logit_scale`` is the model's parameter (the log of the logit multiplier). Returns the loss
    and the top-1 accuracy of finding the partner, averaged over both directions (a detached
    scalar, for the logs).
    """
    img = image_features / image_features.norm(dim=-1, keepdim=True)
    txt = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = logit_scale.exp() * img @ txt.t()  # rows: images, columns: texts
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    with torch.no_grad():
        hits = (logits.argmax(dim=1) == labels).float().mean()
        hits = (hits + (logits.argmax(dim=0) == labels).float().mean()) / 2
    return loss, hits


@torch.no_grad()
def clamp_logit_scale(model: ContrastiveModel) -> None:
    """Keep the logit multiplier in [1, 100] (CLIP's guard against a collapsing temperature)."""
    model.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)


def centre_cube(volume: np.ndarray, size: int) -> np.ndarray:
    """Centre ``volume`` in a ``size``-voxel cube: zero-pad short axes, crop long ones.

    Matches the authors' ``padding_or_crop`` whenever the size difference is even; for odd
    differences (where theirs returns a cube one voxel short) the extra voxel goes after.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {vol.shape}")
    crops, pads = [], []
    for n in vol.shape:
        diff = size - n
        if diff >= 0:
            crops.append(slice(None))
            pads.append((diff // 2, diff - diff // 2))
        else:
            start = -diff // 2
            crops.append(slice(start, start + size))
            pads.append((0, 0))
    return np.pad(vol[tuple(crops)], pads, mode="constant", constant_values=0)
