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
* **Voxel-major fusion block** (:class:`FastFusionBlock`): the prompt-gating block as matrix
  products on the (B, N, C) voxel-major view of a channels-last volume, with one-call
  LayerNorms, in about half the passes over memory of the original. The depthwise 3x3x3
  convolution stays a grouped convolution on channels-last memory: on the CPU it was measured
  against a contiguous layout (1.4-3x slower), 27 shifted multiply-adds (3-12x slower) and one
  patch per call (1.3-1.5x slower than batches of two), see ``benchmarks/bench_network.py``.

The source network is left untouched: training keeps the unfused modules, and checkpoints load
and save in the authors' format. The fused copy refuses training mode (the folded statistics
would no longer be updated). Arrays follow the network's conventions: patches (B, 1, D, H, W),
features (B, C, D, H, W), coordinates (B, K, 3) in array-axis order, normalised to [-1, 1].
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .network import FusionBlock, ResBlock, ResEncoder, SynthesisConfig, SynthesisNetwork


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


class FastFusionBlock(nn.Module):
    """The fusion block (:class:`~tumsyn_bids.model.network.FusionBlock`) on voxel-major matrices.

    Same arithmetic as the original up to float rounding, in fewer passes over the volume: the
    feature volume is handled as a (B, N, C) matrix (N = D*H*W voxels, which is the memory of a
    channels-last tensor), the 1x1x1 convolutions become matrix products, the LayerNorms one
    ``layer_norm`` call each, the residual add of the feed-forward rides on its last product,
    and the cross-attention keys are not normalised one by one: the cosine logits are the dot
    products divided by the key norms. The key/value tensor is still formed in the authors'
    channel-major memory order (it is cut raw into tokens of 2C consecutive values).
    """

    def __init__(self, block: FusionBlock) -> None:
        super().__init__()
        c = block.norm2.body.weight.shape[0]
        self.heads = block.c_attn.heads
        self.dim = c
        self.text_lora = copy.deepcopy(block.text_lora)
        attn, mlp = block.c_attn, block.mlp
        hidden = mlp.project_in.weight.shape[0]
        constants = {
            "norm2_weight": block.norm2.body.weight,
            "norm2_bias": block.norm2.body.bias,
            "norm3_weight": block.norm3.body.weight,
            "norm3_bias": block.norm3.body.bias,
            "q_weight": attn.q.weight.reshape(c, c),
            "q_bias": attn.q.bias,
            "kv_weight": attn.kv.weight.reshape(2 * c, c),
            "kv_bias": attn.kv.bias,
            "proj_weight": attn.proj.weight.reshape(c, c),
            "proj_bias": attn.proj.bias,
            "in_weight": mlp.project_in.weight.reshape(hidden, c),
            "out_weight": mlp.project_out.weight.reshape(c, hidden // 2),
        }
        for name, value in constants.items():
            self.register_buffer(name, value.detach().clone())
        self.dwconv = copy.deepcopy(mlp.dwconv)

    def gate(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The channel gate (B, C) of the cross-attention: x (B, N, C) voxel-major, text (B, C)."""
        b, n, c = x.shape
        h = self.heads
        q = F.normalize(F.linear(text, self.q_weight, self.q_bias).view(b, h, c // h), dim=-1)
        # kv in the authors' channel-major order: (B, 2C, N) = W_kv @ x^T + b
        kv = torch.baddbmm(
            self.kv_bias.view(1, -1, 1), self.kv_weight.expand(b, -1, -1), x.transpose(1, 2)
        )
        kv = kv.view(b, n, 2, h, c // h)  # the raw reshape: token t = values t*2C .. t*2C+2C-1
        k, v = kv[:, :, 0], kv[:, :, 1]  # (B, N, heads, head_dim)
        logits = torch.einsum("bhd,bnhd->bhn", q, k)
        logits.div_(torch.linalg.vector_norm(k, dim=-1).clamp_min_(1e-12).transpose(1, 2))
        attn = logits.softmax(dim=-1)
        out = torch.einsum("bhn,bnhd->bhd", attn, v).reshape(b, c)
        return F.linear(out, self.proj_weight, self.proj_bias)

    def forward(self, x: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) features and a (B, C) or (B, 1, C) prompt embedding -> same shape."""
        b, c, depth, height, width = x.shape
        if text_emb.dim() == 3:
            text_emb = text_emb.squeeze(1)
        # (B, N, C) voxel-major view; a copy only if x is not channels-last already
        xv = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)
        y = self.text_lora(text_emb)
        g = self.gate(xv, y)
        xn = F.layer_norm(xv * g[:, None, :], (c,), self.norm2_weight, self.norm2_bias, 1e-5)
        hid = xn @ self.in_weight.t()  # (B, N, hidden) = channels-last (B, hidden, D, H, W)
        hidden = hid.shape[-1]
        vol = hid.view(b, depth, height, width, hidden).permute(0, 4, 1, 2, 3)
        hid = conv3d(vol, self.dwconv)
        hid = hid.permute(0, 2, 3, 4, 1).reshape(b, -1, hidden)
        gated = F.gelu(hid[..., : hidden // 2]).mul_(hid[..., hidden // 2 :])
        out = torch.baddbmm(xn, gated, self.out_weight.t().expand(b, -1, -1))
        out = F.layer_norm(out, (c,), self.norm3_weight, self.norm3_bias, 1e-5)
        return out.view(b, depth, height, width, c).permute(0, 4, 1, 2, 3)


class FusedSynthesisNetwork(nn.Module):
    """Inference-only equivalent of :class:`SynthesisNetwork` (see the module docstring).

    Same interface: ``features(patch (B, 1, D, H, W), text_emb (B, C)) -> (B, C, D, H, W)``,
    ``decode(features, coords (B, K, 3)) -> (B, K)``, ``forward`` = decode(features(...)).
    """

    def __init__(self, network: SynthesisNetwork) -> None:
        super().__init__()
        self.config: SynthesisConfig = network.config
        self.encoder = FusedEncoder(network.encoder)
        self.fusion = nn.ModuleList(FastFusionBlock(b) for b in network.fusion.block)
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
        x = self.encoder(patch)
        for block in self.fusion:
            x = block(x, text_emb)
        return x

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
