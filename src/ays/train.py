"""Train small EDM denoisers, save and load them, and ship a few pretrained ones.

The training objective is EDM's (Karras et al. 2022, "Elucidating the Design Space
of Diffusion-Based Generative Models", §5 and Table 1):

    L = E_{sigma, x0, n} [ lambda(sigma) · ||D(x0 + sigma·n, sigma) - x0||² ],
    ln sigma ~ N(P_mean, P_std²),  P_mean = -1.2, P_std = 1.2,
    lambda(sigma) = (sigma² + sigma_data²) / (sigma · sigma_data)²,

with the denoiser in EDM's preconditioned form
``D = c_skip x + c_out F(c_in x, c_noise)`` (:class:`ays.denoisers.EDMPrecond`),
whose weighting makes the effective target of ``F`` have unit variance at every
sigma. The losses reported here are per dimension (mean over the elements of a
sample, then over the batch), so that a 2-D toy and 64-pixel digits read alike.
For the ideal denoiser ``D*`` the loss does not reach 0: ``E||D* - x0||²`` is the
posterior variance, a known floor for Gaussian data (``d·c²sigma²/(c²+sigma²)``
per sample; the tests check that training reaches it).

Optimisation is Adam with a linear learning-rate warm-up and a cosine decay, and
the denoiser returned is an exponential moving average (EMA) of the weights with
EDM's half-life parametrisation: after each step the average moves towards the
weights by ``1 - beta``, ``beta = 0.5 ** (1 / h)``, so that a weight's influence
halves every ``h`` steps; ``h`` ramps up as ``min(ema, ema_rampup · step)`` so
that the average forgets the random initialisation quickly.

Everything random (minibatches, noise levels, noise) is drawn from one
``torch.Generator`` seeded by ``seed``; the network's initial weights come from
:func:`ays.nets.build`'s own seed. The same command on the same machine (and
thread count) gives the same weights.

Saved models and the pretrained ones that ship (``ays-model/1``) are
:mod:`ays.model_file`'s; :func:`save_model`, :func:`load_model`, :func:`pretrained` are
re-exported here.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import nets
from .denoisers import EDMPrecond, edm_loss_weight
from .model_file import FORMAT, frozen, load_model, model_info, pretrained, pretrained_names, save_model
from .validate import AysError, check_positive, check_steps

__all__ = [
    "FORMAT",
    "P_MEAN",
    "P_STD",
    "TrainResult",
    "edm_loss",
    "ideal_loss",
    "load_model",
    "model_info",
    "plot_loss",
    "pretrained",
    "pretrained_names",
    "sample_sigma",
    "save_model",
    "sigma_data_of",
    "train",
]

Tensor = torch.Tensor
P_MEAN = -1.2
P_STD = 1.2



# ------------------------------------------------------------------ the objective
def sample_sigma(n: int, generator: torch.Generator | None, *, p_mean: float = P_MEAN, p_std: float = P_STD) -> Tensor:
    """Training noise levels: ``ln sigma ~ N(p_mean, p_std²)`` (EDM Table 1), ``[n]`` float32."""
    return torch.exp(p_mean + p_std * torch.randn(n, generator=generator))


def edm_loss(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    sigma_data: float,
) -> Tensor:
    """Per-sample EDM loss ``lambda(sigma) · mean_dims (D(x0 + sigma·noise, sigma) - x0)²``, ``[batch]``.

    ``lambda = 1/c_out²`` is :func:`ays.denoisers.edm_loss_weight`.
    ``sigma`` is ``[batch]``; ``noise`` has the shape of ``x0``. The caller draws both
    (with :func:`sample_sigma` and ``torch.randn``), so two denoisers can be compared
    on the same draws.
    """
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    d = denoiser(x0 + s * noise, sigma)
    err = (d - x0).square().reshape(x0.shape[0], -1).mean(dim=1)
    return edm_loss_weight(sigma, sigma_data).to(err.dtype) * err


# ----------------------------------------------------------------------- data
def _data_sampler(problem_or_data: Any) -> tuple[Callable[[int, torch.Generator], Tensor], Tensor | None]:
    """A function ``draw(n, generator) -> [n, *shape]`` and, for a tensor, the tensor itself."""
    if isinstance(problem_or_data, torch.Tensor):
        data = problem_or_data.detach().to(device="cpu", dtype=torch.float32)
        if data.ndim < 2 or data.shape[0] < 1:
            raise AysError(f"training data must have shape [N, *shape] with N >= 1, got {tuple(data.shape)}")
        if not bool(torch.isfinite(data).all()):
            raise AysError("training data hold NaN or inf")
        n_data = data.shape[0]

        def draw(n: int, g: torch.Generator) -> Tensor:
            # Minibatches with replacement: each step is an independent draw, so the
            # stream depends only on the generator, not on epoch bookkeeping.
            return data[torch.randint(n_data, (n,), generator=g)]

        return draw, data
    sample = getattr(problem_or_data, "sample", None)
    fn = sample if callable(sample) else problem_or_data
    if not callable(fn):
        raise AysError(
            "train needs a problem (with .sample(n, generator)), a data tensor [N, *shape] "
            f"or a callable data(n, generator); got {type(problem_or_data).__name__}"
        )

    def draw_fn(n: int, g: torch.Generator) -> Tensor:
        x = fn(n, g)
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] != n:
            raise AysError(f"the data source returned {type(x).__name__} {tuple(getattr(x, 'shape', ()))}, "
                           f"expected a tensor [{n}, *shape]")
        return x.detach().to(device="cpu", dtype=torch.float32)

    return draw_fn, None


def sigma_data_of(problem_or_data: Any, *, samples: int = 16384, seed: int = 0) -> float:
    """The data scale EDM's preconditioning needs: the root mean square of the data per dimension.

    EDM derives ``c_in``, ``c_skip`` and ``c_out`` from the second moment of the data
    (its ``sigma_data`` is that root mean square for zero-mean data). Exact for a
    tensor and for a mixture problem (from ``covariance()`` and ``mean()``); otherwise
    estimated from ``samples`` draws of a generator seeded with ``seed``.
    """
    if isinstance(problem_or_data, torch.Tensor):
        x = problem_or_data.detach().to(torch.float64)
        return float(x.square().mean().sqrt())
    cov = getattr(problem_or_data, "covariance", None)
    mean = getattr(problem_or_data, "mean", None)
    if callable(cov) and callable(mean):
        c = cov().to(torch.float64)
        m = mean().to(torch.float64).reshape(-1)
        return math.sqrt((float(torch.diagonal(c).sum()) + float(m.square().sum())) / m.numel())
    draw, _ = _data_sampler(problem_or_data)
    x = draw(samples, torch.Generator().manual_seed(seed)).to(torch.float64)
    return float(x.square().mean().sqrt())


def ideal_loss(
    problem: Any,
    sigma_data: float,
    *,
    samples: int = 65536,
    seed: int = 0,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
) -> tuple[float, float]:
    """The EDM loss of a problem's exact denoiser ``problem.denoiser``: the floor training approaches.

    ``E||D* - x0||²`` is the posterior variance, which no network can remove; the
    Monte Carlo estimate over ``samples`` draws (generator seeded with ``seed``) is
    returned with its standard error, ``(mean, stderr)``, per dimension.
    """
    exact = getattr(problem, "denoiser", None)
    if not callable(exact) or not callable(getattr(problem, "sample", None)):
        raise AysError(f"{type(problem).__name__} has no exact denoiser (need .denoiser and .sample)")
    samples = check_steps(samples, name="samples", minimum=2)
    sd = check_positive(sigma_data, name="sigma_data")
    g = torch.Generator().manual_seed(check_steps(seed, name="seed", minimum=0))
    x0 = problem.sample(samples, g).to(torch.float64)
    sigma = sample_sigma(samples, g, p_mean=p_mean, p_std=p_std).to(torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    per = edm_loss(exact, x0, sigma, noise, sd)
    return float(per.mean()), float(per.std()) / math.sqrt(samples)


# -------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        denoiser: the EMA denoiser ``D(x, sigma)`` (an :class:`EDMPrecond`, eval mode,
            gradients off): the model to sample from.
        net: the raw network at the last step (not averaged), still trainable.
        losses: ``[steps]`` float64, the minibatch loss of every step (per dimension).
        config: the training settings, ``sigma_data`` and the network config; what
            :func:`save_model` stores beside the weights.
    """

    denoiser: EDMPrecond
    net: nn.Module
    losses: Tensor
    config: dict[str, Any] = field(default_factory=dict)

    def final_loss(self, window: int = 1000) -> float:
        """Mean minibatch loss over the last ``window`` steps."""
        return float(self.losses[-window:].mean())

    def loss_curve(self, points: int = 200) -> tuple[int, list[float]]:
        """The loss curve condensed to at most ``points`` block means: ``(block length, means)``."""
        block = max(1, math.ceil(self.losses.numel() / points))
        means = [float(self.losses[i : i + block].mean()) for i in range(0, self.losses.numel(), block)]
        return block, means

    def save(self, path: str | os.PathLike[str], **extra: Any) -> str:
        """Save the EMA denoiser with this run's config, the condensed loss curve and ``extra`` keys."""
        block, means = self.loss_curve()
        config = {**self.config, "final_loss": self.final_loss(), "loss_block": block, "loss_curve": means, **extra}
        return save_model(path, self.denoiser, config)

    def final_loss_stderr(self, window: int = 1000) -> float:
        """Standard error of :meth:`final_loss` (steps' losses taken as independent draws)."""
        tail = self.losses[-window:]
        return float(tail.std()) / math.sqrt(tail.numel()) if tail.numel() > 1 else float("nan")

    def plot(self, path: str | os.PathLike[str], *, title: str | None = None, floor: float | None = None,
             floor_stderr: float | None = None) -> str:
        """Save the loss curve as an image (see :func:`plot_loss`)."""
        return plot_loss(self.losses, path, title=title, floor=floor, floor_stderr=floor_stderr)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    # Linear warm-up (Adam's early second-moment estimates are poor), then a cosine
    # decay to 0: a small final learning rate removes most of the minibatch noise
    # from the last weights, which matters for the sharp small-sigma denoiser.
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def train(
    problem_or_data: Any,
    net: nn.Module,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    ema: float | None = 500.0,
    ema_rampup: float | None = 0.05,
    warmup: int | None = None,
    sigma_data: float | None = None,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    log_every: int = 100,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fit the raw network ``net`` (``F`` of EDM) as a denoiser of the data; Karras et al. 2022, §5.

    Args:
        problem_or_data: a problem (``.sample(n, generator)``, e.g. ``ays.problems.get``),
            a tensor of clean samples ``[N, *shape]`` (minibatches drawn with
            replacement) or a callable ``data(n, generator)``.
        net: a network ``net(x_in, c_noise)`` (:mod:`ays.nets`); trained in place.
        steps: optimiser steps. batch_size: samples per step. lr: Adam's peak rate.
        seed: seeds the generator of minibatches, noise levels and noise.
        ema: EMA half-life in steps (``None`` or 0: return the final weights).
        ema_rampup: the half-life is ``min(ema, ema_rampup·step)`` (``None``: constant).
        warmup: learning-rate warm-up steps (default ``min(1000, steps // 20)``).
        sigma_data: the data scale of the preconditioning (default :func:`sigma_data_of`).
        p_mean, p_std: the log-normal law of training noise levels.
        log_every: call ``callback`` every this many steps (and after the last).
        callback: receives ``{"step", "steps", "loss" (mean since the last call), "lr", "net"}``,
            ``net`` the network a save now would keep (the EMA one; do not modify it), for checkpoints.

    Returns:
        A :class:`TrainResult` with the EMA denoiser and the loss of every step.
    """
    steps = check_steps(steps, name="steps")
    batch_size = check_steps(batch_size, name="batch_size")
    lr = check_positive(lr, name="lr")
    seed = check_steps(seed, name="seed", minimum=0)
    log_every = check_steps(log_every, name="log_every")
    p_std = check_positive(p_std, name="p_std")
    if not math.isfinite(float(p_mean)):
        raise AysError(f"p_mean must be finite, got {p_mean!r}")
    ema_h = 0.0 if ema is None else check_positive(ema, name="ema", allow_zero=True)
    rampup = None if ema_rampup is None else check_positive(ema_rampup, name="ema_rampup")
    warmup = min(1000, steps // 20) if warmup is None else check_steps(warmup, name="warmup", minimum=0)
    if not isinstance(net, nn.Module):
        raise AysError(f"net must be a torch.nn.Module (see ays.nets), got {type(net).__name__}")
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise AysError("net has no trainable parameters")

    draw, _ = _data_sampler(problem_or_data)
    sd = sigma_data_of(problem_or_data) if sigma_data is None else check_positive(sigma_data, name="sigma_data")

    g = torch.Generator().manual_seed(seed)
    net.train()
    model = EDMPrecond(net, sd)
    ema_net = copy.deepcopy(net).eval().requires_grad_(False) if ema_h > 0 else None
    # foreach: one fused update for all tensors (several times faster for small nets on CPU)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    ema_params = list(ema_net.parameters()) if ema_net is not None else []
    net_params = list(net.parameters())
    losses = torch.empty(steps, dtype=torch.float64)
    since = 0.0

    for step in range(steps):
        factor = _lr_factor(step, steps, warmup)
        for group in opt.param_groups:
            group["lr"] = lr * factor
        x0 = draw(batch_size, g)
        sigma = sample_sigma(batch_size, g, p_mean=p_mean, p_std=p_std)
        noise = torch.randn(x0.shape, generator=g)
        loss = edm_loss(model, x0, sigma, noise, sd).mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise AysError(f"training diverged at step {step + 1} (loss {value}); try a smaller --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = value
        since += value

        if ema_net is not None:
            h = ema_h if rampup is None else min(ema_h, rampup * (step + 1))
            beta = 0.5 ** (1.0 / max(h, 1e-8))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, net_params, 1.0 - beta)
                for be, b in zip(ema_net.buffers(), net.buffers()):
                    be.copy_(b)

        done = step + 1
        if callback is not None and (done % log_every == 0 or done == steps):
            n_since = done % log_every or min(log_every, done)
            averaged = ema_net if ema_net is not None else net
            callback({"step": done, "steps": steps, "loss": since / n_since, "lr": lr * factor, "net": averaged})
            since = 0.0
        elif done % log_every == 0:
            since = 0.0

    final = ema_net if ema_net is not None else copy.deepcopy(net).eval().requires_grad_(False)
    config = {
        "net": nets.config_of(net) if hasattr(net, "config") else {"name": type(net).__name__},
        "sigma_data": sd,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "ema": ema_h,
        "ema_rampup": rampup,
        "warmup": warmup,
        "p_mean": float(p_mean),
        "p_std": p_std,
        "problem": getattr(problem_or_data, "name", None),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return TrainResult(denoiser=frozen(EDMPrecond(final, sd)), net=net, losses=losses, config=config)


# ------------------------------------------------------------------------ plot
def plot_loss(
    losses: Tensor | list[float],
    path: str | os.PathLike[str],
    *,
    window: int | None = None,
    title: str | None = None,
    floor: float | None = None,
    floor_stderr: float | None = None,
) -> str:
    """Save the training loss curve (log scale; raw and a moving average) to ``path`` atomically.

    ``floor``, when given, is drawn as the loss of the ideal denoiser (:func:`ideal_loss`);
    with ``floor_stderr``, as the Monte Carlo estimate it is: a band of ± 2 standard errors.
    """
    import matplotlib  # loads only here, when a plot is drawn

    from .plot import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
    if y.numel() == 0:
        raise AysError("no losses to plot")
    w = window or max(1, y.numel() // 100)
    kernel = torch.ones(1, 1, w, dtype=torch.float64) / w
    smooth = torch.nn.functional.conv1d(y.reshape(1, 1, -1), kernel).reshape(-1)
    steps = torch.arange(1, y.numel() + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    try:
        ax.plot(steps.numpy(), y.numpy(), lw=0.5, alpha=0.3, color="C0", label="minibatch")
        ax.plot(steps[w - 1 :].numpy(), smooth.numpy(), lw=1.5, color="C0", label=f"mean of {w} steps")
        if floor is not None and floor_stderr is not None:
            lo, hi = float(floor) - 2 * float(floor_stderr), float(floor) + 2 * float(floor_stderr)
            ax.axhspan(lo, hi, color="C3", alpha=0.15, lw=0)
            ax.axhline(float(floor), color="C3", ls="--", lw=1.0,
                       label=f"ideal denoiser, estimate {float(floor):.4f} ± {2 * float(floor_stderr):.4f} (2 s.e.)")
        elif floor is not None:
            ax.axhline(float(floor), color="C3", ls="--", lw=1.0, label=f"ideal denoiser ({float(floor):.4f})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("EDM loss (per dimension)")
        ax.set_title(title or "training loss", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        return save_figure(fig, path)
    finally:
        plt.close(fig)
