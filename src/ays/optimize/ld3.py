"""LD3: a schedule learnt by backpropagating through the target solver onto a teacher's samples.

Tong et al., "Learning to Discretize Denoising Diffusion ODEs" (ICLR 2025; public code
vinhsuhi/LD3). A teacher (here ``teacher`` at ``teacher_steps`` steps, DPM-Solver++(2M) by
default) maps ``B`` noises ``z_b`` to samples ``y_b``. The student is the target solver on a
schedule with free parameters ``θ ∈ R^n``, mapped as LD3's ``model_lambda_fn`` maps them to a
decreasing schedule with fixed ends (uniform in ``λ = −log σ`` at ``θ = 0``):

    log σ_i = log σ_max − (log σ_max − log σ_min) · Σ_{m < i} softmax(θ)_m,    i = 0..n.

LD3's relaxed objective (their Eq. 7, "soft teacher forcing") lets the student start from a
nearby noise: ``min_θ Σ_b min_{||z'_b − z_b|| ≤ r} L(student_θ(σ_max z'_b), y_b)``, with ``L`` the
mean squared error per dimension (LD3's L2) or, given ``features=f``, the mean squared error
of ``f``'s features (in place of LD3's LPIPS). As in LD3's code: RMSprop (momentum 0.9) on ``θ``
with its gradient clipped to norm 1, mini-batches of ``batch`` training noises; each ``z'`` takes
a gradient step of ``shift_lr`` (default ``12/n``), is projected back onto the ball (radius
``r``; default LD3's ``0.001·d/n²``) and is kept only if it lowers its sample's loss; the
parameters with the lowest loss on ``valid_samples`` held-out noises are kept, and after
``patience`` evaluations without improvement the best are restored and the learning rate
decays by ``lr_decay``. ``r = 0`` is plain teacher matching.

Honest differences from LD3: only LD3's first parameter set is learnt (its second, a shift of
the levels at which the model is evaluated, has no place in a schedule file); the validation
loss uses the original noises; ``early_stopping=True`` stops once the learning rate has decayed to
``min_lr``, ``False`` runs every epoch. Schedules are sampled with their last level replaced by
0 (:func:`ays.schedules.to_sampling`), so the student's last step is the final denoise and the
learnt levels are ``σ_1 .. σ_{n−1}``. For a stochastic target the student is its ODE counterpart
(:data:`ays.optimize.oss.ODE_COUNTERPART`), the teacher an ODE run, as in LD3 (an ODE method).

Denoiser calls: ``calls = forward + 2 · backward``. A backward pass through the denoiser is
counted as two forward calls (the usual cost of a reverse-mode pass: one product with each of
the two Jacobians per layer). ``forward``: the teacher (``B × teacher_steps``), every student
run (training, the re-evaluation of moved starts, validation); ``backward``: the rows of every
training run. The result's history records both.

Budget and stages: the plan (meter stages ``"teacher"``, ``"train"``, ``"validate"``) counts
model rows, i.e. forward calls; ``budget=`` is charged ``calls`` as above. Unless given,
``teacher_samples`` is the largest count whose run at every epoch fits the budget (half of it
held out unless ``valid_samples`` is given); early stopping only spends less.

Under ``torch.distributed`` the teacher run and every validation are shared out across ranks
(rows gathered, then the same mean), which is exact for a denoiser and ``features`` that work
row by row. The gradient training is replicated on every rank: splitting a mini-batch would
sum its gradient in another order, so the result would not be the single-process one bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .. import distributed as _dist
from .. import schedules, solvers
from ..data import Cond, bind, conditioning, draw, take, to
from ..klub import seed_for
from ..validate import AysError, check_positive, check_sigmas, check_steps
from .dp import check_fits, fit_budget
from .oss import ode_counterpart, run_student
from .result import OptimizeResult
from .task import Task, register

__all__ = ["BACKWARD_FACTOR", "Ld3Options", "ld3", "logits_for", "project", "schedule_from_logits"]

Tensor = torch.Tensor
#: Forward-call equivalents charged for one backward pass through the denoiser.
BACKWARD_FACTOR = 2


def schedule_from_logits(theta: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    """LD3's map from free parameters ``θ`` [n] to ``n + 1`` decreasing levels, ends fixed (differentiable)."""
    span = math.log(sigma_max) - math.log(sigma_min)
    inner = torch.cumsum(torch.softmax(theta, dim=0), dim=0)[:-1]
    logs = torch.cat([theta.new_zeros(1), inner * span, theta.new_full((1,), span)])
    out = torch.exp(math.log(sigma_max) - logs)
    return torch.cat([out.new_full((1,), sigma_max), out[1:-1], out.new_full((1,), sigma_min)])


def logits_for(sigmas: Tensor) -> Tensor:
    """Parameters ``θ`` whose schedule is ``sigmas``: the logs of its steps in ``log σ`` (up to a constant)."""
    s = check_sigmas(sigmas, allow_final_zero=False)
    return torch.log(s[:-1].log() - s[1:].log())


def sampling_form(sigmas: Tensor) -> Tensor:
    """``sigmas`` with the last level replaced by 0, keeping the graph (:func:`ays.schedules.to_sampling`)."""
    return torch.cat([sigmas[:-1], sigmas.new_zeros(1)])


def project(z_new: Tensor, z: Tensor, radius: float) -> Tensor:
    """Each row of ``z_new`` moved back into the ball of ``radius`` around its row of ``z``."""
    diff = z_new - z
    norm = diff.reshape(diff.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (z.ndim - 1)))
    scale = torch.where(norm > radius, radius / norm.clamp_min(1e-300), torch.ones_like(norm))
    return z + diff * scale


@dataclass(frozen=True)
class Ld3Options:
    """Options of ``method="ld3"`` (defaults: LD3's code)."""

    teacher: str = "dpmpp_2m"  #: the teacher's solver (deterministic)
    teacher_steps: int = 64  #: teacher steps, EDM rho=7 spacing
    teacher_samples: int = 100  #: noises (LD3: 50 training + 50 validation)
    valid_samples: int = 50  #: of those, held out to choose the best parameters (0: keep the last)
    radius: float | None = None  #: ball radius r on the unit noise (None: LD3's 0.001·d/n²; 0: no relaxation)
    shift_lr: float | None = None  #: step size of the starts (None: LD3's 12/n)
    lr: float = 0.005  #: RMSprop learning rate of θ (LD3's lr_time_1)
    momentum: float = 0.9
    batch: int = 2  #: training noises per step (LD3: 2)
    epochs: int = 7  #: passes over the training noises (LD3: 2 + 5 rounds)
    eval_every: int = 1  #: steps between validations (LD3: 1)
    patience: int = 5  #: validations without improvement before the best is restored and lr decays
    lr_decay: float = 0.8
    min_lr: float = 5e-5
    features: Callable[[Tensor], Tensor] | None = None  #: feature map for the loss (None: L2 on samples)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> Ld3Options:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AysError(
                f"unknown option(s) for method 'ld3': {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        opt = cls(**options)
        for name in ("teacher_steps", "teacher_samples", "batch", "epochs", "eval_every", "patience"):
            check_steps(getattr(opt, name), name=name)
        check_steps(opt.valid_samples, name="valid_samples", minimum=0)
        if opt.valid_samples >= opt.teacher_samples:
            raise AysError(f"valid_samples ({opt.valid_samples}) must be below teacher_samples ({opt.teacher_samples})")
        for name in ("lr", "lr_decay", "min_lr"):
            check_positive(getattr(opt, name), name=name)
        check_positive(opt.momentum, name="momentum", allow_zero=True)
        if opt.radius is not None:
            check_positive(opt.radius, name="radius", allow_zero=True)
        if opt.shift_lr is not None:
            check_positive(opt.shift_lr, name="shift_lr", allow_zero=True)
        if opt.features is not None and not callable(opt.features):
            raise AysError(f"features must be a callable features(x) -> tensor, got {type(opt.features).__name__}")
        if not isinstance(opt.teacher, str) or solvers.info(opt.teacher).stochastic:
            raise AysError(f"teacher must be a deterministic solver, got {opt.teacher!r}")
        return opt

    def record(self) -> dict[str, Any]:
        """JSON-able settings: the feature map by name."""
        out = asdict(self)
        f = self.features
        out["features"] = None if f is None else getattr(f, "__qualname__", type(f).__name__)
        return out


def _loss(out: Tensor, target: Tensor, features: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Per-sample mean squared error per dimension, of the samples or of their features."""
    if features is not None:
        out, target = features(out), features(target)
    return (out - target).reshape(out.shape[0], -1).square().mean(dim=1).to(torch.float64)


def _levels_of(task: Task, steps: int) -> Tensor:
    s = schedules.karras(steps, task.sigma_min, task.sigma_max, rho=7.0)
    if task.space.is_discrete:
        s = task.space.level(torch.unique(task.space.index(s))).to(torch.float64).flip(0)
    return schedules.to_sampling(s)


class _Counter:
    """Denoiser rows: forward calls and backward passes."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0

    @property
    def calls(self) -> int:
        return self.forward + BACKWARD_FACTOR * self.backward


def _plan(opt: Ld3Options, c_teacher: int, c_student: int, noises: int, valid: int, moves: bool,
          steps: int) -> dict[str, int]:
    """Forward rows of each stage and backward rows of a run that trains every epoch (an upper bound).

    ``teacher``: ``B × calls(teacher)``; ``train``: each training noise once per epoch, plus its
    moved start re-run when the radius is positive; ``validate``: ``valid × calls(student)`` per
    validation, one every ``eval_every`` optimiser steps; ``backward``: one per training row.
    """
    n_train = noises - valid
    if steps < 2 or n_train < 1:  # one step: nothing to learn
        return {"teacher": noises * c_teacher, "train": 0, "validate": 0, "backward": 0, "valid_samples": valid}
    updates = opt.epochs * -(-n_train // opt.batch)
    train = opt.epochs * n_train * c_student
    return {"teacher": noises * c_teacher, "train": train * (2 if moves else 1),
            "validate": (updates // opt.eval_every) * valid * c_student if valid else 0,
            "backward": train, "valid_samples": valid}


def _charged(plan: dict[str, int]) -> int:
    """The calls a plan is charged: forward rows plus :data:`BACKWARD_FACTOR` per backward row."""
    return plan["teacher"] + plan["train"] + plan["validate"] + BACKWARD_FACTOR * plan["backward"]


@register("ld3")
def ld3(task: Task, **options: Any) -> OptimizeResult:
    """LD3 (Tong et al., ICLR 2025): the schedule learnt through the solver, with soft teacher forcing."""
    opt = Ld3Options.parse(options)
    student = ode_counterpart(task.solver)
    n, lo, hi = task.steps, task.sigma_min, task.sigma_max
    probe, probe_cond = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "ld3", "probe")))
    dim = probe[0].numel()
    radius = 0.001 * dim / n**2 if opt.radius is None else float(opt.radius)
    shift_lr = 12.0 / n if opt.shift_lr is None else float(opt.shift_lr)
    c_student = solvers.count_calls(student, sampling_form(schedules.loglinear(n, lo, hi)))
    teach = _levels_of(task, opt.teacher_steps)
    c_teacher = solvers.count_calls(opt.teacher, teach)
    if task.budget is not None and "teacher_samples" not in options:
        # The noises the budget buys; half held out unless valid_samples is given (LD3: 50 of 100).
        def plan_of(b: int) -> dict[str, int]:
            valid = opt.valid_samples if "valid_samples" in options else b // 2
            return _plan(opt, c_teacher, c_student, b, valid, radius > 0, n)

        least = opt.valid_samples + 1 if "valid_samples" in options else 2
        b = fit_budget(lambda k: _charged(plan_of(k)), task.budget, least, "ld3", "teacher noises")
        opt = dataclasses.replace(opt, teacher_samples=b, valid_samples=plan_of(b)["valid_samples"])
    planned = _plan(opt, c_teacher, c_student, opt.teacher_samples, opt.valid_samples, radius > 0, n)
    check_fits(_charged(planned), task.budget, "ld3")
    settings = task.settings({**opt.record(), "student_solver": student, "resolved_radius": radius,
                              "resolved_shift_lr": shift_lr, "backward_factor": BACKWARD_FACTOR})
    task.meter.plan({k: planned[k] for k in ("teacher", "train", "validate")})
    gen = torch.Generator().manual_seed(seed_for(task.seed, "ld3", "noise"))
    noise = torch.randn((opt.teacher_samples, *probe.shape[1:]), generator=gen, dtype=probe.dtype).to(probe.device)
    # each noise is denoised under the conditioning of a data row of its own (ays.data)
    g_cond = torch.Generator().manual_seed(seed_for(task.seed, "ld3", "cond"))
    cond = conditioning(task.data, opt.teacher_samples, g_cond, probe_cond)
    cond = to(cond, probe.device)
    count = _Counter()
    rows = opt.teacher_samples if task.batch_size is None else task.batch_size

    def run(theta: Tensor, z: Tensor, c: Cond, counted: bool = True) -> Tensor:
        """The student's samples from starts ``z`` under conditioning ``c`` (in chunks of the batch size);
        counts forward rows unless the caller counts them (a shared-out run)."""
        levels = sampling_form(schedule_from_logits(theta, lo, hi))
        outs = [z[:0]]
        for a in range(0, z.shape[0], rows):
            den = bind(task.denoiser, take(c, slice(a, a + rows)))
            out, used = run_student(student, den, z[a : a + rows] * hi, levels)
            count.forward += used if counted else 0
            outs.append(out)
        return torch.cat(outs)

    fn = solvers.get(opt.teacher)

    def teacher_rows(ks: slice) -> Tensor:
        """The teacher's samples of the noises ``ks`` (this rank's share under torch.distributed)."""
        parts = [noise[:0]]
        for a in range(ks.start, ks.stop, rows):
            e = min(ks.stop, a + rows)
            parts.append(fn(bind(task.denoiser, take(cond, slice(a, e))), noise[a:e] * float(teach[0]), teach))
        return torch.cat(parts)

    with task.meter.stage("teacher"):
        target = _dist.map_shards(opt.teacher_samples, teacher_rows, dim=0)
    count.forward += opt.teacher_samples * c_teacher
    n_train = opt.teacher_samples - opt.valid_samples
    z_train, y_train = noise[:n_train], target[:n_train]
    z_valid, y_valid = noise[n_train:], target[n_train:]
    c_train, c_valid = take(cond, slice(0, n_train)), take(cond, slice(n_train, None))
    world = _dist.world_size()

    def valid_loss(theta_now: Tensor) -> float:
        """Mean held-out loss; its rows are shared out across ranks and gathered (exact)."""

        def share(ks: slice) -> Tensor:
            if ks.stop == ks.start:
                return torch.zeros(0, dtype=torch.float64)
            return _loss(run(theta_now, z_valid[ks], take(c_valid, ks), counted=False), y_valid[ks], opt.features)

        with task.meter.stage("validate"):
            per = _dist.map_shards(opt.valid_samples, share, dim=0)
        count.forward += opt.valid_samples * c_student
        return float(per.mean())

    init = task.initial(n) if task.init is not None else schedules.loglinear(n, lo, hi)
    theta = logits_for(init).clone().requires_grad_(True)
    optim = torch.optim.RMSprop([theta], lr=opt.lr, momentum=opt.momentum)
    starts = z_train.clone()  # the relaxed starts z', kept across epochs as LD3 keeps its latents
    shuffle = torch.Generator().manual_seed(seed_for(task.seed, "ld3", "shuffle"))
    best_loss, best_theta, bad, step = math.inf, theta.detach().clone(), 0, 0
    history: list[dict[str, Any]] = []
    stop = n < 2  # one step: nothing to learn
    for epoch in range(opt.epochs):
        if stop:
            break
        train_losses = []
        for idx in torch.randperm(n_train, generator=shuffle).split(opt.batch):
            z_b = starts[idx].clone().requires_grad_(radius > 0)
            # Training is replicated on every rank (module docstring): the stage's calls are each rank's.
            with task.meter.stage("train", calls=planned["train"] * world), torch.enable_grad():
                per = _loss(run(theta, z_b, take(c_train, idx)), y_train[idx], opt.features)
                loss = per.mean()
                grads = torch.autograd.grad(loss, [theta, z_b] if radius > 0 else [theta])
            count.backward += idx.numel() * c_student
            train_losses.append(float(loss))
            theta.grad = grads[0]
            torch.nn.utils.clip_grad_norm_([theta], 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            if radius > 0:
                cand = project(z_b.detach() - shift_lr * grads[1], z_train[idx], radius)
                with task.meter.stage("train", calls=planned["train"] * world):
                    moved = run(theta.detach(), cand, take(c_train, idx))
                better = _loss(moved, y_train[idx], opt.features) < per.detach()
                starts[idx] = torch.where(better.reshape(-1, *([1] * (cand.ndim - 1))), cand, starts[idx])
            step += 1
            if opt.valid_samples and step % opt.eval_every == 0:
                v = valid_loss(theta.detach())
                if v < best_loss:
                    best_loss, best_theta, bad = v, theta.detach().clone(), 0
                else:
                    bad += 1
                if bad >= opt.patience:
                    with torch.no_grad():
                        theta.copy_(best_theta)
                    lr_now = optim.param_groups[0]["lr"]
                    optim.param_groups[0]["lr"] = max(lr_now * opt.lr_decay, opt.min_lr)
                    bad = 0
                    if task.early_stopping and lr_now <= opt.min_lr:
                        stop = True
                        break
        sig = schedule_from_logits((best_theta if opt.valid_samples else theta).detach(), lo, hi)
        entry = {"stage": "ld3", "steps": n, "sweep": epoch, "train_loss": sum(train_losses) / len(train_losses),
                 "valid_loss": best_loss if opt.valid_samples else None, "lr": optim.param_groups[0]["lr"],
                 "shift": float((starts - z_train).reshape(n_train, -1).norm(dim=1).max()),
                 "forward": count.forward, "backward": count.backward, "calls": count.calls,
                 "sigmas": sig.tolist()}
        history.append(entry)
        if task.progress is not None:
            task.progress({"event": "sweep", "klub": None, **entry})
    final = best_theta if opt.valid_samples else theta.detach()
    sigmas = schedule_from_logits(final, lo, hi).detach() if n >= 2 else init
    sigmas = check_sigmas(task.space.snap(sigmas, f"{n}-step schedule"), allow_final_zero=False)
    history.append({"stage": "ld3", "steps": n, "forward": count.forward, "backward": count.backward,
                    "calls": count.calls, "sigmas": sigmas.tolist()})
    if task.progress is not None:
        task.progress({"event": "done", "klub": None, "calls": count.calls, "sigmas": sigmas.tolist()})
    return OptimizeResult(
        sigmas=sigmas, steps=n, solver=task.solver, method=task.method, timesteps=task.space.timesteps(sigmas),
        history=history, calls=count.calls, settings=settings, model=task.model,
    )
