"""An inference-only copy of the synthesis network with exact speed-ups (issue 21).

:func:`fuse_for_inference` turns a loaded :class:`~tumsyn_bids.model.network.SynthesisNetwork`
into a :class:`FusedSynthesisNetwork` with the same ``features``/``decode``/``forward`` interface
whose output equals the plain network's up to float32 rounding (reduction order only):

* **Folded encoder.** Every ``BatchNorm3d`` of the encoder, and the residual scale ``res_scale``
  of each residual block, is folded into the convolution before it (the standard conv-BN
  folding, e.g. Jacob et al., CVPR 2018, section 3.2): with running statistics (mu, var), affine
  (gamma, beta), ``eps`` and ``s = gamma / sqrt(var + eps)``, the convolution ``W x + b``
  followed by the normalisation equals ``(s W) x + s (b - mu) + beta``; a residual scale ``r``
  multiplies both. The folding is computed in float64 and rounded once to float32.
* **Direct oneDNN convolutions on the CPU.** PyTorch hands a 3-D convolution to oneDNN only
  when batch x channels x depth x height exceeds 20,480 (or the batch holds several patches); a
  lone small patch otherwise runs on the slower native kernel. Float32 convolutions on the CPU
  here call oneDNN (``aten::mkldnn_convolution``) directly whatever the batch size, in the
  memory format of the weights (channels-last 3-D once the engine converts the network).

The source network is left untouched: training keeps the unfused modules, and checkpoints load
and save in the authors' format. The fused copy refuses training mode (the folded statistics
would no longer be updated). Arrays follow the network's conventions: patches (B, 1, D, H, W),
features (B, C, D, H, W), coordinates (B, K, 3) in array-axis order, normalised to [-1, 1].
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .network import ResBlock, ResEncoder, SynthesisConfig, SynthesisNetwork


def fold_batch_norm(conv: nn.Conv3d, bn: nn.BatchNorm3d | None, scale: float = 1.0) -> nn.Conv3d:
    """A new convolution equal to ``scale * bn(conv(x))`` in eval mode (``bn`` may be None).

    Weight (C_out, C_in/groups, kD, kH, kW) and bias (C_out,) keep their shapes, device and
    dtype; the arithmetic is done in float64. Raises ``ValueError`` if ``bn`` has no running
    statistics.
    """
    weight = conv.weight.detach().double()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(conv.out_channels, dtype=torch.float64, device=weight.device)
    )
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("cannot fold a BatchNorm without running statistics")
        s = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.affine:
            s = s * bn.weight.detach().double()
        shift = bn.bias.detach().double() if bn.affine else torch.zeros_like(s)
        weight = weight * s.view(-1, *([1] * (weight.dim() - 1)))
        bias = (bias - bn.running_mean.double()) * s + shift
    fused = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight * scale)
        fused.bias.copy_(bias * scale)
    return fused


def conv3d(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(x)`` (stride 1, zero padding), through oneDNN directly for float32 on the CPU."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        one = [1, 1, 1]
        return torch.ops.aten.mkldnn_convolution(
            x, conv.weight, conv.bias, list(conv.padding), one, one, conv.groups
        )
    return conv(x)


class FusedResBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))``: a :class:`ResBlock` with its BatchNorms and scale folded."""

    def __init__(self, block: ResBlock) -> None:
        super().__init__()
        conv1, bn1, _relu, conv2, bn2 = block.body
        self.conv1 = fold_batch_norm(conv1, bn1)
        self.conv2 = fold_batch_norm(conv2, bn2, block.res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3d(torch.relu_(conv3d(x, self.conv1)), self.conv2).add_(x)


class FusedEncoder(nn.Module):
    """The residual encoder with folded residual blocks (same head, body conv and tail)."""

    def __init__(self, encoder: ResEncoder) -> None:
        super().__init__()
        *blocks, last = encoder.body
        self.head = copy.deepcopy(encoder.head[0])
        self.blocks = nn.ModuleList(FusedResBlock(b) for b in blocks)
        self.body_tail = copy.deepcopy(last)
        self.tail = copy.deepcopy(encoder.tail[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv3d(x, self.head)
        y = x
        for block in self.blocks:
            y = block(y)
        return conv3d(conv3d(y, self.body_tail).add_(x), self.tail)


class FusedSynthesisNetwork(nn.Module):
    """Inference-only equivalent of :class:`SynthesisNetwork` (see the module docstring).

    Same interface: ``features(patch (B, 1, D, H, W), text_emb (B, C)) -> (B, C, D, H, W)``,
    ``decode(features, coords (B, K, 3)) -> (B, K)``, ``forward`` = decode(features(...)).
    """

    def __init__(self, network: SynthesisNetwork) -> None:
        super().__init__()
        self.config: SynthesisConfig = network.config
        self.encoder = FusedEncoder(network.encoder)
        self.fusion = copy.deepcopy(network.fusion)
        self.imnet = copy.deepcopy(network.imnet)
        self.eval()

    def train(self, mode: bool = True) -> FusedSynthesisNetwork:
        if mode:
            raise RuntimeError(
                "a fused network is for inference only: train the SynthesisNetwork it came from"
            )
        return super().train(False)

    def features(self, patch: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Prompt-conditioned feature volume (B, C, D, H, W) of a (B, 1, D, H, W) patch."""
        return self.fusion(self.encoder(patch), text_emb)

    def decode(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Intensities (B, K) at normalised coordinates (B, K, 3) in array-axis order."""
        return SynthesisNetwork.decode(self, features, coords)

    def decode_chunked(
        self, features: torch.Tensor, coords: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        """:meth:`decode` of (B, K, 3) coordinates, ``chunk`` query points (in all) per call."""
        return SynthesisNetwork.decode_chunked(self, features, coords, chunk)

    def forward(
        self, patch: torch.Tensor, coords: torch.Tensor, text_emb: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(self.features(patch, text_emb), coords)


def fuse_for_inference(network: SynthesisNetwork) -> FusedSynthesisNetwork:
    """A fused, eval-mode copy of ``network`` on the same device; ``network`` is not modified."""
    return FusedSynthesisNetwork(network)
