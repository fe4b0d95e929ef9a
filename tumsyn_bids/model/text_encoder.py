"""The text tower of TUMSyn's stage-1 CLIP.

Only the text half of the authors' ``CLIP`` is needed at inference: a token + positional
embedding, a causal transformer with QuickGELU MLPs, a final LayerNorm and the projection of the
end-of-text position. Parameter names match the published ``checkpoint_CLIP.pt`` so that its
``model_state_dict`` (minus ``visual.*`` and ``logit_scale``) loads strictly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .metadata import DEFAULT_TEXT_HEADS  # the published 8: shapes cannot tell the head count


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes of the text tower; all but ``heads`` can be read off a state dict."""

    width: int = 512
    layers: int = 8
    heads: int = DEFAULT_TEXT_HEADS
    context_length: int = 90
    vocab_size: int = 49408
    embed_dim: int = 768

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as CLIP does for fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU, which the published weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class TextEncoder(nn.Module):
    """``encode(token_ids) -> [N, embed_dim]``: TUMSyn's prompt embedding."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads)
        self.ln_final = LayerNorm32(config.width)
        self.text_projection = nn.Parameter(torch.zeros(config.width, config.embed_dim))
        mask = torch.full((config.context_length, config.context_length), float("-inf")).triu_(1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding
        x = x.permute(1, 0, 2)  # the authors' MultiheadAttention runs sequence-first
        x = self.transformer(x, self.causal_mask.to(x.dtype))
        x = self.ln_final(x.permute(1, 0, 2))
        # CLIP pools the end-of-text token, the highest id; argmax takes its FIRST occurrence.
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return pooled @ self.text_projection

    encode = forward


def text_config_from_state_dict(
    state_dict: dict[str, torch.Tensor], heads: int = DEFAULT_TEXT_HEADS
) -> TextEncoderConfig:
    """Read every size but the head count off the tensor shapes."""
    vocab_size, width = state_dict["token_embedding.weight"].shape
    layer_ids = {int(k.split(".")[2]) for k in state_dict if k.startswith("transformer.resblocks.")}
    if width % heads:
        raise ValueError(f"text width {width} is not divisible by {heads} attention heads")
    return TextEncoderConfig(
        width=int(width),
        layers=len(layer_ids),
        heads=int(heads),
        context_length=int(state_dict["positional_embedding"].shape[0]),
        vocab_size=int(vocab_size),
        embed_dim=int(state_dict["text_projection"].shape[1]),
    )
