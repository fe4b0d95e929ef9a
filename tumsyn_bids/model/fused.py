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
  products on the (B, N, C) voxel-major view of a channels-last volume, one-call LayerNorms,
  and its gated feed-forward in slabs of z-planes that stay in the CPU caches (which also
  bounds the 4C-wide intermediates' memory). The depthwise 3x3x3 convolution stays a grouped
  convolution on channels-last memory: on the CPU it was measured against a contiguous layout
  (1.4-3x slower), 27 shifted multiply-adds (3-12x slower) and one patch per call (1.3-1.5x
  slower than batches of two), see ``benchmarks/bench_network.py``.
* **Decoder** (:class:`FastDecoder`): trilinear sampling as a gather of the 8 corner rows
  (``embedding_bag``) instead of the CPU's slow 3-D ``grid_sample``, the MLP in cache-sized
  blocks with in-place ReLUs, and the first layer applied once per feature voxel instead of once
  per query point when that is cheaper (super-resolution).

Every rewrite is exact in real arithmetic: in float64 the fused network equals the plain one
to 1e-10 (``tests/model/test_fused.py``); in float32 they differ by reduction order only.

The source network is left untouched: training keeps the unfused modules, and checkpoints load
and save in the authors' format. The fused copy refuses training mode (the folded statistics
would no longer be updated). Arrays follow the network's conventions: patches (B, 1, D, H, W),
features (B, C, D, H, W), coordinates (B, K, 3) in array-axis order, normalised to [-1, 1].
"""

from __future__ import annotations

import contextlib
import copy
from itertools import product
from typing import NamedTuple

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


def _autocast_dtype(device: str) -> torch.dtype | None:
    """The autocast dtype on ``device`` (a device type) if autocast is on there, else None
    (also for device types without autocast, such as ``meta``)."""
    try:
        enabled = torch.is_autocast_enabled(device)
    except RuntimeError:  # no autocast for this device type
        return None
    return torch.get_autocast_dtype(device) if enabled else None


def _onednn(x: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` can go to oneDNN directly (float32 on a CPU build)."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
    )


def conv3d(x: torch.Tensor, conv: nn.Conv3d, padding: tuple[int, int, int] | None = None):
    """``conv(x)`` (stride 1, zero padding ``padding`` or the module's), via oneDNN if it can.

    Elsewhere (CUDA, other dtypes) PyTorch's ``conv3d`` runs with the parameters in ``x``'s
    dtype (and autocast, if on, decides as usual).
    """
    padding = list(padding if padding is not None else conv.padding)
    if _onednn(x):
        one = [1, 1, 1]
        return torch.ops.aten.mkldnn_convolution(
            x, conv.weight, conv.bias, padding, one, one, conv.groups
        )
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    return F.conv3d(x, conv.weight.to(x.dtype), bias, padding=padding, groups=conv.groups)


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

    #: Voxels per slab of the feed-forward and per CPU thread: 2-4 MB of 256-channel rows
    #: measured fastest on the development CPU (1.7-2.5x faster than the whole patch at once,
    #: one thread). On a GPU the slabs only bound memory: :attr:`GPU_SLAB_ROWS` voxels each.
    SLAB_ROWS = 2048
    GPU_SLAB_ROWS = 1 << 16
    #: Key/value values formed at once in :meth:`gate` (2^25: 128 MB in float32); a larger
    #: matrix is streamed in row slabs of this size.
    KV_BUDGET = 1 << 25

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
        """The channel gate (B, C) of the cross-attention: x (B, N, C) voxel-major, text (B, C).

        The key/value matrix (2C x N per patch: 1.3 GB for the published model on a 60^3 patch)
        is formed whole when it holds at most :attr:`KV_BUDGET` values, else streamed
        (:meth:`_streamed_gate`).
        """
        b, n, c = x.shape
        h = self.heads
        q = F.normalize(F.linear(text, self.q_weight, self.q_bias).view(b, h, c // h), dim=-1)
        if 2 * c * n > self.KV_BUDGET:
            out = self._streamed_gate(x, q)
            return F.linear(out.reshape(b, c), self.proj_weight, self.proj_bias)
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

    def _streamed_gate(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The attention output (B, heads, head_dim) with the key/value matrix in row slabs.

        Rows ``r0 .. r1`` of the channel-major (2C, N) key/value matrix are the flat values
        ``r0 N .. r1 N``, i.e. the authors' tokens (2C consecutive values each) of that range;
        a token cut by a slab boundary is completed with the next slab. The softmax over tokens
        is accumulated online (running maximum, rescaled sum and weighted values; Milakov and
        Gimelshein 2018, "Online normalizer calculation for softmax"), which is exact in real
        arithmetic. Memory: one slab of at most :attr:`KV_BUDGET` values.
        """
        b, n, c = x.shape
        h, d, width = self.heads, c // self.heads, 2 * c
        rows = max(1, self.KV_BUDGET // n)
        dtype = torch.promote_types(x.dtype, torch.float32)
        out = x.new_empty((b, h, d), dtype=dtype)
        for bi in range(b):
            xt = x[bi].t()  # (C, N)
            carry = x.new_empty(0)
            top = torch.full((h,), -torch.inf, dtype=dtype, device=x.device)
            total = torch.zeros(h, dtype=dtype, device=x.device)
            acc = torch.zeros(h, d, dtype=dtype, device=x.device)
            for r0 in range(0, width, rows):
                r1 = min(r0 + rows, width)
                part = torch.addmm(self.kv_bias[r0:r1, None], self.kv_weight[r0:r1], xt)
                flat = torch.cat([carry, part.view(-1)]) if carry.numel() else part.view(-1)
                tokens = flat.numel() // width
                carry = flat[tokens * width :]
                if tokens == 0:
                    continue
                kv = flat[: tokens * width].view(tokens, 2, h, d)
                k, v = kv[:, 0], kv[:, 1]
                logits = torch.einsum("hd,nhd->hn", q[bi], k).to(dtype)
                logits.div_(torch.linalg.vector_norm(k, dim=-1).clamp_min_(1e-12).t())
                new_top = torch.maximum(top, logits.amax(dim=-1))
                rescale = torch.exp(top - new_top)
                weights = torch.exp(logits - new_top[:, None])
                total = total * rescale + weights.sum(dim=-1)
                acc = acc * rescale[:, None] + torch.einsum("hn,nhd->hd", weights, v.to(dtype))
                top = new_top
            out[bi] = acc / total[:, None]
        return out.to(x.dtype)

    def feed_forward(self, xn: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        """``xn + project_out(gelu(x1) * x2)``, ``x1, x2 = dwconv(project_in(xn))``, slab-wise.

        ``xn`` (B, N, C) voxel-major over a (D, H, W) volume. Runs over slabs of z-planes of
        about :attr:`SLAB_ROWS` voxels per CPU thread, so that the 4C-wide intermediates stay
        in the CPU caches, and their memory is bounded (published model, 60^3 patch, 2
        threads: slabs of 1 plane, a 3-plane buffer of 3072 channels, 133 MB, instead of
        2.6 GB per intermediate). Each slab's depthwise convolution needs the plane below and
        above: they are carried over from the previous slab (not computed twice), and are zero
        outside the volume, which is the convolution's zero padding.
        """
        device = xn.device.type
        dtype = _autocast_dtype(device)
        if dtype is not None:  # run in the autocast dtype, explicitly
            with torch.autocast(device, enabled=False):
                return self._feed_forward(xn, size, dtype)
        return self._feed_forward(xn, size, xn.dtype)

    def _feed_forward(
        self, xn: torch.Tensor, size: tuple[int, int, int], dtype: torch.dtype
    ) -> torch.Tensor:
        b, n, c = xn.shape
        depth, height, width = size
        plane = height * width
        xn = xn.to(dtype)
        w_in, w_out = self.in_weight.t().to(dtype), self.out_weight.t().to(dtype)
        hidden = w_in.shape[1]
        if xn.device.type == "cpu":
            slab_rows = self.SLAB_ROWS * torch.get_num_threads()
        else:
            slab_rows = self.GPU_SLAB_ROWS
        planes = max(1, min(depth, round(slab_rows / plane)))
        out = torch.empty_like(xn)
        buf = xn.new_empty(((planes + 2) * plane, hidden))  # planes z0 - 1 .. z1 of a slab
        for bi in range(b):
            for z0 in range(0, depth, planes):
                z1 = min(z0 + planes, depth)
                if z0 == 0:
                    buf[:plane].zero_()
                    first = 0
                else:  # planes z0 - 1 and z0 were computed for the previous slab
                    buf[:plane].copy_(buf[planes * plane : (planes + 1) * plane])
                    buf[plane : 2 * plane].copy_(buf[(planes + 1) * plane : (planes + 2) * plane])
                    first = z0 + 1
                last = min(z1 + 1, depth)
                rows = slice((first - z0 + 1) * plane, (last - z0 + 1) * plane)
                torch.mm(xn[bi, first * plane : last * plane], w_in, out=buf[rows])
                if last == z1:  # the slab ends the volume: zero padding above it
                    buf[(last - z0 + 1) * plane : (z1 - z0 + 2) * plane].zero_()
                m = z1 - z0
                vol = buf[: (m + 2) * plane].view(1, m + 2, height, width, hidden)
                # planes z0 - 1 and z1 are in the buffer: no padding in z
                dw = conv3d(vol.permute(0, 4, 1, 2, 3), self.dwconv, padding=(0, 1, 1))
                dw = dw.permute(0, 2, 3, 4, 1).reshape(m * plane, hidden)
                gated = F.gelu(dw[:, : hidden // 2]).mul_(dw[:, hidden // 2 :])
                span = slice(z0 * plane, z1 * plane)
                torch.addmm(xn[bi, span], gated, w_out, out=out[bi, span])
        return out

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
        out = self.feed_forward(xn, (depth, height, width))
        out = F.layer_norm(out, (c,), self.norm3_weight, self.norm3_bias, 1e-5)
        return out.view(b, depth, height, width, c).permute(0, 4, 1, 2, 3)


def trilinear_corners(coords: torch.Tensor, size: tuple[int, int, int]):
    """The 8 voxels and weights that ``grid_sample`` blends for each query point.

    ``coords`` (..., 3) are normalised coordinates in array-axis order (z, y, x) of a volume of
    ``size`` (D, H, W) voxels, as the network's ``decode`` receives them. Follows PyTorch's
    trilinear ``grid_sample`` with ``align_corners=False`` and zero padding: the position on an
    axis of n voxels is ``((u + 1) * n - 1) / 2``; the corners are its floor and floor + 1; a
    corner outside the volume gets weight 0 (its index is set to 0, any valid voxel). Corner
    order is grid_sample's (tnw, tne, tsw, tse, bnw, bne, bsw, bse), i.e. C order over
    (z, y, x) offsets, and each weight is the product x * y * z as there.

    Returns ``index`` (..., 8) int64 into the flattened (D*H*W) volume in C order, ``weight``
    (..., 8) in the dtype of ``coords``, and ``z_low`` (...) int64, the lower z corner.
    """
    lows, fracs, valid = [], [], []
    for axis, n in enumerate(size):
        pos = ((coords[..., axis] + 1) * n - 1) / 2
        low = torch.floor(pos)
        lows.append(low.long())
        fracs.append((low + 1 - pos, pos - low))  # weights of the low and the high corner
        valid.append(((lows[-1] >= 0) & (lows[-1] < n), (lows[-1] >= -1) & (lows[-1] < n - 1)))
    d, h, w = size
    index, weight = [], []
    for oz, oy, ox in product((0, 1), repeat=3):
        ok = valid[0][oz] & valid[1][oy] & valid[2][ox]
        flat = ((lows[0] + oz) * h + (lows[1] + oy)) * w + (lows[2] + ox)
        index.append(torch.where(ok, flat, 0))
        wgt = fracs[2][ox] * fracs[1][oy] * fracs[0][oz]
        weight.append(torch.where(ok, wgt, 0))
    return torch.stack(index, -1), torch.stack(weight, -1), lows[0]


class _DecoderWeights(NamedTuple):
    """The decoder's parameters in the dtype of one call, matrices transposed for ``x @ W``."""

    feat_t: torch.Tensor
    coord_t: torch.Tensor
    bias: torch.Tensor
    rest: list[tuple[torch.Tensor, torch.Tensor]]


class FastDecoder(nn.Module):
    """The implicit decoder (``imnet``) with gathered trilinear sampling and a choice of order.

    Sampling: the 8 corner feature vectors of each query are gathered from the voxel-major
    feature matrix and blended with ``embedding_bag`` (weighted sums of rows), with the weights of
    :func:`trilinear_corners` -- equal to ``grid_sample`` up to float rounding, and much faster on
    the CPU, where PyTorch's 3-D ``grid_sample`` does not vectorise over channels.

    Blocks: on the CPU, queries run through the MLP :attr:`BLOCK` rows at a time (at most the
    caller's ``chunk``), so that each layer's activations stay in the CPU caches between the
    matrix product, the bias and the ReLU (in place); 2048 rows measured fastest for the demo
    and the published widths, 1.3-1.6x faster than 65,536. On a GPU, ``chunk`` rows.

    Order: the first layer is linear, ``W [f; c] + b = W_f f + W_c c + b``, and trilinear
    sampling is a weighted sum, so ``W_f sample(F) = sample(W_f F)``: the feature part of the
    first layer can be applied once per feature voxel (``"factorised"``) instead of once per
    query point (``"plain"``). This holds with zero padding too, because the out-of-volume
    corners contribute weight 0 on both sides; only the bias must not go into ``W_f F`` (the
    weights of a query near the border sum to less than 1), so it is added after sampling.
    ``"auto"`` picks the order of lower estimated cost (see :meth:`factorised_pays`).

    Memory: the projected volume ``W_f F`` (one row of the first layer's width per feature
    voxel; 2.6 GB for the published model on a 60^3 patch) is computed for slabs of z-planes
    of at most ``projection_budget`` values (default 2^26, 256 MB in float32); each slab reuses
    the last plane of the previous one, so nothing is projected twice. Peak memory is then
    bounded by the budget and ``chunk``, whatever the patch.
    """

    #: Cost of one gathered multiply-add relative to one in a matrix product, measured on the
    #: 2-core CPU used for development (about 8 for 64-768 channels); used by the "auto" order.
    GATHER_COST = 8.0
    #: Query rows per MLP step on the CPU (cache-sized); see the class docstring.
    BLOCK = 2048

    def __init__(self, mlp: nn.Module, projection_budget: int = 1 << 26) -> None:
        super().__init__()
        linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("the decoder has no Linear layers")
        first = linears[0]
        self.feature_dim = first.in_features - 3
        weight = first.weight.detach()
        self.register_buffer("first_feat_t", weight[:, : self.feature_dim].t().contiguous())
        self.register_buffer("first_coord_t", weight[:, self.feature_dim :].t().contiguous())
        self.register_buffer("first_bias", first.bias.detach().clone())
        self.rest = nn.ModuleList(copy.deepcopy(m) for m in linears[1:])
        self.projection_budget = int(projection_budget)

    @property
    def width(self) -> int:
        """Width of the first layer."""
        return self.first_bias.shape[0]

    def factorised_pays(self, queries: int, voxels: int) -> bool:
        """Whether decoding ``queries`` points from ``voxels`` feature voxels is cheaper factorised.

        Multiply-adds per first-layer output, plain: (C + 3) + 8 g C / H per query; factorised:
        C per voxel + (8 g + 3) per query (C features, H first-layer width, g ``GATHER_COST``).
        For the published model (C 768, H 3072) it pays above ~1.1 queries per feature voxel,
        for the bundled demo model (C 64, H 256) above ~6.5 (super-resolution, scale >= 1.9).
        """
        c, h, g = self.feature_dim, self.width, self.GATHER_COST
        plain = queries * ((c + 3) + 8 * g * c / h)
        factorised = voxels * c + queries * (8 * g + 3)
        return factorised < plain

    def forward(
        self, features: torch.Tensor, coords: torch.Tensor, chunk: int = 1 << 16, order="auto"
    ) -> torch.Tensor:
        """Intensities (B, K) of features (B, C, D, H, W) at coordinates (B, K, 3).

        ``chunk``: at most this many query points per MLP step. ``order``: "plain",
        "factorised" or "auto". Under ``torch.autocast`` the layers run in the autocast dtype
        (the corner weights are always computed in float32). Raises ``ValueError`` on another
        order or on features whose channel count does not match the decoder.
        """
        if order not in ("plain", "factorised", "auto"):
            raise ValueError(f"order must be 'plain', 'factorised' or 'auto', got {order!r}")
        b, c, d, h, w = features.shape
        if c != self.feature_dim:
            raise ValueError(f"features have {c} channels, the decoder expects {self.feature_dim}")
        n, k = d * h * w, coords.shape[1]
        if order == "auto":
            order = "factorised" if self.factorised_pays(k, n) else "plain"
        device = features.device.type
        dtype = features.dtype
        autocast = _autocast_dtype(device)
        dtype = autocast or dtype
        with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
            # voxel-major (B, N, C): a view if the features are channels-last
            fv = features.permute(0, 2, 3, 4, 1).reshape(b, n, c).to(dtype)
            weights = _DecoderWeights(
                self.first_feat_t.to(dtype),
                self.first_coord_t.to(dtype),
                self.first_bias.to(dtype),
                [(m.weight.t().to(dtype), m.bias.to(dtype)) for m in self.rest],
            )
            coords = coords.to(torch.promote_types(coords.dtype, torch.float32))
            step = max(1, min(chunk, self.BLOCK) if device == "cpu" else chunk)
            run = self._plain if order == "plain" else self._factorised
            return run(fv, coords, (d, h, w), step, weights)

    @staticmethod
    def _first_and_rest(
        first: torch.Tensor, coords: torch.Tensor, weights: _DecoderWeights
    ) -> torch.Tensor:
        """Add the coordinate part of the first layer, ReLU, the other layers; (k, H) -> (k,)."""
        h = torch.relu_(first.addmm_(coords.to(first.dtype), weights.coord_t))
        for i, (weight_t, bias) in enumerate(weights.rest):
            h = torch.addmm(bias, h, weight_t)
            if i < len(weights.rest) - 1:
                h = torch.relu_(h)
        return h.squeeze(-1)

    def _plain(self, fv, coords, size, step, weights: _DecoderWeights) -> torch.Tensor:
        b, k = coords.shape[:2]
        out = fv.new_empty(b, k)
        for bi in range(b):
            for i in range(0, k, step):
                crd = coords[bi, i : i + step]
                index, weight, _ = trilinear_corners(crd, size)
                sampled = F.embedding_bag(
                    index, fv[bi], per_sample_weights=weight.to(fv.dtype), mode="sum"
                )
                first = torch.addmm(weights.bias, sampled, weights.feat_t)
                out[bi, i : i + step] = self._first_and_rest(first, crd, weights)
        return out

    def _factorised(self, fv, coords, size, step, weights: _DecoderWeights) -> torch.Tensor:
        b, k = coords.shape[:2]
        d, h, w = size
        out = fv.new_empty(b, k)
        plane = h * w
        planes = max(1, min(d, self.projection_budget // (plane * self.width) - 1))
        buffer = fv.new_empty(((planes + 1) * plane, self.width))
        z_low = torch.floor(((coords[..., 0] + 1) * d - 1) / 2).long().clamp_(0, d - 1)
        for bi in range(b):
            for z0 in range(0, d, planes):
                z1 = min(z0 + planes, d)
                top = min(z1 + 1, d)  # planes z0 .. top - 1 are needed (one above the slab)
                if z0 == 0:
                    torch.mm(fv[bi, : top * plane], weights.feat_t, out=buffer[: top * plane])
                else:  # plane z0 was the previous slab's top plane
                    buffer[:plane].copy_(buffer[planes * plane : (planes + 1) * plane])
                    rows = slice((z0 + 1) * plane, top * plane)
                    dest = buffer[plane : (top - z0) * plane]
                    torch.mm(fv[bi, rows], weights.feat_t, out=dest)
                projected = buffer[: (top - z0) * plane]
                sel = ((z_low[bi] >= z0) & (z_low[bi] < z1)).nonzero().squeeze(1)
                for i in range(0, sel.numel(), step):
                    idx = sel[i : i + step]
                    crd = coords[bi, idx]
                    index, weight, _ = trilinear_corners(crd, size)
                    index = (index - z0 * plane).clamp_(min=0)  # invalid corners have weight 0
                    first = F.embedding_bag(
                        index, projected, per_sample_weights=weight.to(fv.dtype), mode="sum"
                    )
                    # the bias after sampling: a border query's weights sum to less than 1
                    out[bi, idx] = self._first_and_rest(first.add_(weights.bias), crd, weights)
        return out


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
        self.imnet = FastDecoder(network.imnet)
        #: Decoder order: "auto", "plain" or "factorised" (see FastDecoder).
        self.decode_order = "auto"
        self.requires_grad_(False)
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
        return self.imnet(features, coords, order=self.decode_order)

    def decode_chunked(
        self, features: torch.Tensor, coords: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        """:meth:`decode`, ``chunk`` query points per decoder step (bounds the activations)."""
        return self.imnet(features, coords, chunk=chunk, order=self.decode_order)

    def forward(
        self, patch: torch.Tensor, coords: torch.Tensor, text_emb: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(self.features(patch, text_emb), coords)


def fuse_for_inference(network: SynthesisNetwork) -> FusedSynthesisNetwork:
    """A fused, eval-mode copy of ``network`` on the same device; ``network`` is not modified."""
    return FusedSynthesisNetwork(network)
