"""TUMSyn's stage-2 synthesis network (the authors' ``LCCD``).

Three parts, with parameter names matching the published ``checkpoint.pth`` so that its ``sd_G``
loads strictly:

* ``encoder`` — an EDSR-style 3-D residual encoder (BatchNorm inside each residual block,
  ``res_scale``) that turns an image patch into a feature volume;
* ``fusion`` — one transformer-like block that gates the feature channels with the prompt
  embedding through a channel cross-attention, then a gated depthwise-conv feed-forward;
* ``imnet`` — an implicit decoder: an MLP on [trilinearly sampled feature, normalised coordinate]
  that predicts one intensity per query coordinate, which is what lets TUMSyn synthesize at any
  resolution.

The authors' quirks are kept on purpose (see the fixture README): the key/value tensor of the
cross-attention is reshaped raw, so its "tokens" are chunks of channel-major memory, not voxels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: The fusion block's head count is hard-coded in the authors' LCCD.
FUSION_HEADS = 8


@dataclass(frozen=True)
class SynthesisConfig:
    """Sizes of the synthesis network. Defaults are the published ``resencoder-256`` model."""

    n_resblocks: int = 24
    n_feats: int = 256
    out_dim: int = 768
    res_scale: float = 0.1
    decoder_hidden: tuple[int, ...] = field(default=(3072, 3072, 768, 256))
    fusion_heads: int = FUSION_HEADS
    encoder_name: str = "resencoder-256"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_hidden"] = list(self.decoder_hidden)
        return d


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, scaled by ``res_scale`` and added to the input."""

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(n_feats, n_feats, 3, padding=1),
            nn.BatchNorm3d(n_feats),
            nn.ReLU(inplace=True),
            nn.Conv3d(n_feats, n_feats, 3, padding=1),
            nn.BatchNorm3d(n_feats),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


class ResEncoder(nn.Module):
    def __init__(self, n_resblocks: int, n_feats: int, out_dim: int, res_scale: float) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv3d(1, n_feats, 3, padding=1))
        blocks: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        blocks.append(nn.Conv3d(n_feats, n_feats, 3, padding=1))
        self.body = nn.Sequential(*blocks)
        self.tail = nn.Sequential(nn.Conv3d(n_feats, out_dim, 3, padding=1))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.tail(self.body(x) + x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every voxel of a (B, C, D, H, W) tensor (eps 1e-5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = _AffineParams(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        shape = (1, -1, 1, 1, 1)
        return (x - mu) / torch.sqrt(var + 1e-5) * self.body.weight.view(
            shape
        ) + self.body.bias.view(shape)


class _AffineParams(nn.Module):
    """Holds ``weight``/``bias`` under the ``.body`` name the checkpoints use."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class MLP(nn.Module):
    """Linear layers with ReLU between them (the authors' ``models.linear.Linear``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ChannelCrossAttention(nn.Module):
    """The text embedding queries the whole patch and returns a per-channel gate (B, C, 1, 1, 1)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Conv3d(dim, dim, 1)
        self.kv = nn.Conv3d(dim, dim * 2, 1)
        self.proj = nn.Conv3d(dim, dim, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        n = x.shape[2] * x.shape[3] * x.shape[4]
        head_dim = c // self.heads
        # text: (B, C, 1, 1, 1) -> q: (B, heads, 1, head_dim)
        q = self.q(text).reshape(b, 1, self.heads, head_dim)
        q = q.permute(0, 2, 1, 3)
        # The authors' raw reshape: channel-major memory cut into chunks of 2*C values.
        kv = self.kv(x).reshape(b, n, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, c, 1, 1, 1)
        return self.proj(out)


class GatedDepthwiseFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.project_in = nn.Conv3d(dim, hidden, 1, bias=False)
        self.dwconv = nn.Conv3d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.project_out = nn.Conv3d(hidden // 2, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class FusionBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm2 = ChannelLayerNorm(dim)
        self.norm3 = ChannelLayerNorm(dim)
        self.c_attn = ChannelCrossAttention(dim, heads)
        self.text_lora = MLP(dim, dim, (dim,))
        self.mlp = GatedDepthwiseFeedForward(dim, dim * 4)

    def text_gate_input(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Adapt the prompt embedding (B, C) or (B, 1, C) to a (B, C, 1, 1, 1) query."""
        if text_emb.dim() == 3:
            text_emb = text_emb.squeeze(1)
        return self.text_lora(text_emb)[:, :, None, None, None]

    def forward(self, x: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        y = self.text_gate_input(text_emb)
        x = x * self.c_attn(x, y)
        x = self.norm2(x)
        x = x + self.mlp(x)
        return self.norm3(x)


class Fusion(nn.Module):
    """Wrapper that gives the block its ``fusion.block.0`` checkpoint name."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.block = nn.ModuleList([FusionBlock(dim, heads)])

    def forward(self, x: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x, text_emb)
        return x


class SynthesisNetwork(nn.Module):
    """Patch features conditioned on a prompt, decoded at arbitrary coordinates."""

    def __init__(self, config: SynthesisConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ResEncoder(
            config.n_resblocks, config.n_feats, config.out_dim, config.res_scale
        )
        self.fusion = Fusion(config.out_dim, config.fusion_heads)
        self.imnet = MLP(config.out_dim + 3, 1, tuple(config.decoder_hidden))

    def features(self, patch: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Prompt-conditioned feature volume (B, C, D, H, W) of a (B, 1, D, H, W) patch."""
        return self.fusion(self.encoder(patch), text_emb)

    def decode(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Intensities (B, K) at normalised coordinates (B, K, 3) in array-axis order.

        ``grid_sample`` wants (x, y, z) = (W, H, D) order, hence the flip; the decoder itself
        sees the coordinates unflipped, as in the authors' code.
        """
        grid = coords.flip(-1)[:, None, None]  # (B, 1, 1, K, 3)
        sampled = F.grid_sample(features, grid, mode="bilinear", align_corners=False)
        sampled = sampled[:, :, 0, 0, :].permute(0, 2, 1)  # (B, K, C)
        inp = torch.cat([sampled, coords.to(sampled.dtype)], dim=-1)
        return self.imnet(inp).squeeze(-1)

    def decode_chunked(
        self, features: torch.Tensor, coords: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        """:meth:`decode` of (B, K, 3) coordinates, ``chunk`` query points (in all) per call.

        Bounds the decoder's activations to ``chunk`` x its widest layer whatever K; the result
        does not depend on ``chunk`` beyond float rounding.
        """
        per_call = max(1, chunk // features.shape[0])
        parts = [
            self.decode(features, coords[:, i : i + per_call])
            for i in range(0, coords.shape[1], per_call)
        ]
        return torch.cat(parts, dim=1)

    def forward(
        self, patch: torch.Tensor, coords: torch.Tensor, text_emb: torch.Tensor
    ) -> torch.Tensor:
        """The authors' ``single_forward``: returns (B, K) predictions."""
        return self.decode(self.features(patch, text_emb), coords)
