"""Small denoising networks: an MLP for points, a conv net for 8×8 images, a UNet for 28×28 MNIST.

These are the raw networks ``F`` of the EDM parametrisation (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", eq. 7):

    D(x, sigma) = c_skip(sigma) · x + c_out(sigma) · F(c_in(sigma) · x, c_noise(sigma))

so every network here has the signature ``net(x_in, c_noise) -> F`` with
``x_in`` of shape ``[batch, *shape]`` and ``c_noise`` of shape ``[batch]``
(EDM uses ``c_noise = ln(sigma) / 4``). The preconditioning itself lives in
:class:`ays.denoisers.EDMPrecond`; :mod:`ays.train` fits these networks.

The first two are deliberately tiny (about 110k-170k parameters, files under 700 kB), so that
they train in minutes on a laptop CPU and evaluate in microseconds per sample:
they are the "trained models" on which the schedule optimiser is evaluated, as
in the toy experiments of Align Your Steps (Sabour et al. 2024, Table 4).

- :class:`MLP` for flat data (the 2-D Gaussian mixtures): residual SiLU blocks of
  width ~128, each conditioned on the noise level by an added embedding.
- :class:`ConvNet` for ``1×8×8`` images (``digits``): a two-resolution U-Net
  (8×8 and 4×4) of residual conv blocks with GroupNorm and a noise embedding.
- :class:`UNet` for ``1×28×28`` images (``mnist``): three resolutions (28, 14, 7) of the
  same residual blocks with multi-head self-attention at the lowest one; 0.56 M parameters
  as shipped (``benchmarks/train_mnist.py``, about 35 minutes on one CPU core).

The noise level enters through :class:`SinusoidalEmbedding`, fixed (parameter
free) sinusoidal features of ``c_noise`` at log-spaced frequencies, the
"Fourier features" of Tancik et al. 2020 without the random draw, so that a
network is fully determined by its config and its state dict.

:func:`build` constructs a network from a name and keyword arguments with a
seeded, local random stream (the global RNG is left as it was); :func:`config_of`
returns what :func:`build` needs to rebuild it, which is what a saved model stores.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import device as _device
from .validate import AysError, check_choice, check_steps

__all__ = ["MLP", "ConvNet", "SinusoidalEmbedding", "UNet", "build", "config_of", "names", "num_parameters"]

Tensor = torch.Tensor


class SinusoidalEmbedding(nn.Module):
    """Fixed features ``[c, cos(2π f_k c), sin(2π f_k c)]`` of a scalar ``c`` per sample.

    The ``(dim - 1) // 2`` frequencies ``f_k`` are log-spaced in ``[f_min, f_max]``.
    With EDM's ``c_noise = ln(sigma)/4`` the useful range of ``c`` is about
    ``[-1.6, 1.1]`` (sigma in [0.002, 80]); the default band resolves it from the
    whole range (f_min = 0.05 cycles per unit) down to changes of a few percent in
    sigma (f_max = 8 cycles per unit). The raw ``c`` is kept as a feature so that
    the embedding is injective and smooth trends are easy to represent.
    """

    def __init__(self, dim: int = 32, f_min: float = 0.05, f_max: float = 8.0) -> None:
        super().__init__()
        dim = check_steps(dim, name="embedding dim", minimum=3)
        if not 0 < f_min < f_max:
            raise AysError(f"need 0 < f_min < f_max, got f_min={f_min}, f_max={f_max}")
        n = (dim - 1) // 2
        freqs = torch.logspace(math.log10(f_min), math.log10(f_max), n, dtype=torch.float64) * (2 * math.pi)
        # A buffer, not a parameter: it is part of the architecture, never trained.
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = 1 + 2 * n

    def forward(self, c: Tensor) -> Tensor:
        # float64 phases (cheap: [batch, dim]); the caller casts to the network's dtype.
        c = c.reshape(-1, 1).to(self.freqs.dtype)
        arg = c * self.freqs
        return torch.cat([c, torch.cos(arg), torch.sin(arg)], dim=1)


def _zero_(layer: nn.Module) -> nn.Module:
    # EDM initialises the last layer of every block to zero: at initialisation each
    # residual block is the identity and the network outputs F = 0, i.e. D = c_skip·x,
    # which is already the optimal denoiser for Gaussian data of variance sigma_data².
    for p in layer.parameters():
        nn.init.zeros_(p)
    return layer


class MLP(nn.Module):
    """Noise-conditioned residual MLP for flat data (``dim`` features, e.g. 2-D points).

    With ``e`` the sinusoidal embedding of ``c_noise``: ``h = W_in x + E_0 e``; then
    ``depth`` residual blocks ``h <- h + W_2 SiLU(W_1 SiLU(h) + E_k e)``; output
    ``W_out SiLU(h)``. 170k parameters at the defaults (hidden 128, depth 3).
    Inputs of any trailing shape are flattened, so ``shape`` may be e.g. ``(2,)``.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 33) -> None:
        super().__init__()
        self._config = {"dim": int(dim), "hidden": int(hidden), "depth": int(depth), "emb_dim": int(emb_dim)}
        dim = check_steps(dim, name="dim")
        hidden = check_steps(hidden, name="hidden")
        depth = check_steps(depth, name="depth", minimum=0)
        self.dim = dim
        self.embed = SinusoidalEmbedding(emb_dim)
        # The noise embedding goes through its own small MLP before each block reads it:
        # a linear read-out of the raw sinusoidal features was measurably worse at small
        # sigma on the 8x8 grid (mode coverage 92 % against 99 % at 20k steps).
        self.emb = nn.Sequential(nn.Linear(self.embed.dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.lin1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.cond = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.lin2 = nn.ModuleList(_zero_(nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = _zero_(nn.Linear(hidden, dim))

    @property
    def config(self) -> dict[str, Any]:
        return {"name": "mlp", **self._config}

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        shape = x.shape
        if x.ndim < 1 or math.prod(shape[1:]) != self.dim:
            raise AysError(f"MLP expects {self.dim} features per sample, got shape {tuple(shape)}")
        # The network runs in its own dtype whatever the caller's (e.g. a float64 solver state).
        dtype = self.inp.weight.dtype
        h = x.reshape(shape[0], -1).to(dtype)
        e = self.emb(self.embed(c_noise).to(dtype))
        h = self.inp(h) + e
        for lin1, cond, lin2 in zip(self.lin1, self.cond, self.lin2):
            h = h + lin2(F.silu(lin1(F.silu(h)) + cond(e)))
        return self.out(F.silu(h)).reshape(shape).to(x.dtype)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus a per-channel bias from the noise embedding, twice; residual."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.cond = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(math.gcd(groups, cout), cout)
        self.conv2 = _zero_(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.cond(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConvNet(nn.Module):
    """A two-level U-Net for small single-channel images (``digits``: 1×8×8).

    8×8: conv in, one residual block (kept as the skip); 4×4 (stride-2 conv):
    ``mid`` residual blocks at twice the width; back to 8×8 (nearest upsampling and
    a conv), concatenated with the skip, one residual block, GroupNorm-SiLU-conv out.
    Every block receives the noise embedding. Height and width must be even.
    112k parameters at the defaults (width 24, one middle block).
    """

    def __init__(self, channels: int = 1, width: int = 24, mid: int = 1, emb_dim: int = 33, groups: int = 8) -> None:
        super().__init__()
        self._config = {
            "channels": int(channels),
            "width": int(width),
            "mid": int(mid),
            "emb_dim": int(emb_dim),
            "groups": int(groups),
        }
        channels = check_steps(channels, name="channels")
        width = check_steps(width, name="width")
        mid = check_steps(mid, name="mid", minimum=0)
        e = 4 * width
        self.channels = channels
        self.embed = SinusoidalEmbedding(emb_dim)
        self.emb = nn.Sequential(nn.Linear(self.embed.dim, e), nn.SiLU(), nn.Linear(e, e), nn.SiLU())
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.enc = _ResBlock(width, width, e, groups)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.ModuleList(_ResBlock(2 * width, 2 * width, e, groups) for _ in range(mid))
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.dec = _ResBlock(2 * width, width, e, groups)
        self.norm = nn.GroupNorm(math.gcd(groups, width), width)
        self.out = _zero_(nn.Conv2d(width, channels, 3, padding=1))

    @property
    def config(self) -> dict[str, Any]:
        return {"name": "conv", **self._config}

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[2] % 2 or x.shape[3] % 2:
            raise AysError(
                f"ConvNet expects [batch, {self.channels}, H, W] with even H and W, got shape {tuple(x.shape)}"
            )
        dtype = self.inp.weight.dtype
        e = self.emb(self.embed(c_noise).to(dtype))
        h = self.enc(self.inp(x.to(dtype)), e)
        skip = h
        h = self.down(h)
        for block in self.mid:
            h = block(h, e)
        h = self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.dec(torch.cat([h, skip], dim=1), e)
        return self.out(F.silu(self.norm(h))).to(x.dtype)


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, pre-GroupNorm, residual.

    The output projection starts at zero (like every residual branch here), so the block
    is the identity at initialisation (Ho et al. 2020's U-Net; Vaswani et al. 2017, eq. 1).
    """

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise AysError(f"attention channels {channels} are not divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(math.gcd(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / sqrt(c/heads)) v, [b, heads, hw, c/heads]
        return x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """A three-resolution U-Net for single-channel images such as MNIST's 1×28×28 (Ronneberger et al. 2015,
    in the diffusion form of Ho et al. 2020 and EDM's DDPM++ at a small scale).

    Encoder: conv in, then per level ``blocks`` residual blocks of width ``widths[i]``, a
    stride-2 conv between levels (28 → 14 → 7); at the lowest level residual blocks around
    a multi-head self-attention layer. Decoder: nearest upsampling and a conv per level,
    concatenation with the encoder's output at that level, ``blocks`` residual blocks;
    GroupNorm-SiLU-conv out. Every residual block reads the noise embedding. Height and
    width must be divisible by ``2 ** (len(widths) - 1)``.
    """

    def __init__(
        self,
        channels: int = 1,
        widths: tuple[int, ...] | list[int] = (32, 64, 64),
        blocks: int = 1,
        heads: int = 4,
        emb_dim: int = 33,
        groups: int = 8,
    ) -> None:
        super().__init__()
        widths = [check_steps(w, name="width") for w in widths]
        if not widths:
            raise AysError("UNet needs at least one level width")
        self._config = {
            "channels": int(channels),
            "widths": widths,
            "blocks": int(blocks),
            "heads": int(heads),
            "emb_dim": int(emb_dim),
            "groups": int(groups),
        }
        self.channels = check_steps(channels, name="channels")
        blocks = check_steps(blocks, name="blocks")
        e = 4 * widths[0]
        self.embed = SinusoidalEmbedding(emb_dim)
        self.emb = nn.Sequential(nn.Linear(self.embed.dim, e), nn.SiLU(), nn.Linear(e, e), nn.SiLU())
        self.inp = nn.Conv2d(self.channels, widths[0], 3, padding=1)
        def chain(cin: int, cout: int) -> nn.ModuleList:  # `blocks` residual blocks, cin -> cout
            return nn.ModuleList(_ResBlock(cin if i == 0 else cout, cout, e, groups) for i in range(blocks))

        self.enc = nn.ModuleList(chain(widths[max(i - 1, 0)], w) for i, w in enumerate(widths))
        self.down = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        self.attn = _Attention(widths[-1], heads, groups)
        self.mid = chain(widths[-1], widths[-1])
        self.up = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in range(len(widths) - 1))
        self.dec = nn.ModuleList(chain(2 * w, w) for w in widths[:-1])
        self.norm = nn.GroupNorm(math.gcd(groups, widths[0]), widths[0])
        self.out = _zero_(nn.Conv2d(widths[0], self.channels, 3, padding=1))

    @property
    def config(self) -> dict[str, Any]:
        return {"name": "unet", **self._config}

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        m = 2 ** (len(self.enc) - 1)
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[2] % m or x.shape[3] % m:
            raise AysError(
                f"UNet expects [batch, {self.channels}, H, W] with H and W divisible by {m}, got shape {tuple(x.shape)}"
            )
        rows = _device.CPU_BATCH_ROWS  # read at call time: benchmarks/unet_cpu.py measures without it
        if x.device.type == "cpu" and x.shape[0] > rows:
            # On the CPU large batches run slower per row (their activations leave the caches:
            # benchmarks/unet_cpu.py); the rows are independent, so chunks give the same output.
            c = c_noise.reshape(-1).expand(x.shape[0]) if c_noise.numel() == 1 else c_noise.reshape(-1)
            return torch.cat([self._forward(x[a : a + rows], c[a : a + rows]) for a in range(0, x.shape[0], rows)])
        return self._forward(x, c_noise)

    def _forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        dtype = self.inp.weight.dtype
        e = self.emb(self.embed(c_noise).to(dtype))
        h = self.inp(x.to(dtype))
        skips = []
        for i, level in enumerate(self.enc):
            if i > 0:
                h = self.down[i - 1](h)
            for block in level:
                h = block(h, e)
            skips.append(h)
        h = self.attn(h)
        for block in self.mid:
            h = block(h, e)
        for i in reversed(range(len(self.dec))):
            h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips[i]], dim=1)
            for block in self.dec[i]:
                h = block(h, e)
        return self.out(F.silu(self.norm(h))).to(x.dtype)


_NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "conv": ConvNet, "unet": UNet}


def names() -> list[str]:
    """The network names :func:`build` accepts."""
    return sorted(_NETS)


def build(name: str, *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Construct network ``name`` (``"mlp"``, ``"conv"`` or ``"unet"``) with weights drawn from ``seed``.

    PyTorch's layer initialisers draw from the global generator; the draw happens
    inside :func:`torch.random.fork_rng`, seeded with ``seed``, so the result is
    reproducible and the caller's global random state is left untouched.
    """
    check_choice(name, _NETS, what="network")
    seed = check_steps(seed, name="seed", minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return _NETS[name](**kwargs)
        except TypeError as e:
            raise AysError(f"bad arguments for network {name!r}: {e}") from None


def config_of(net: nn.Module) -> dict[str, Any]:
    """What :func:`build` needs to rebuild ``net``: ``{"name": ..., **constructor kwargs}``."""
    config = getattr(net, "config", None)
    if not isinstance(config, dict) or config.get("name") not in _NETS:
        raise AysError(f"{type(net).__name__} is not one of the ays networks ({', '.join(names())}); cannot save it")
    return dict(config)


def num_parameters(net: nn.Module) -> int:
    """The number of trainable scalars in ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
