"""LD3: a schedule learnt by backpropagating through the target solver onto a teacher's samples.

(This module is long because LD3 is one training loop whose state, two parameter sets, the
relaxed starts, two optimisers and the validated checkpoint, its two phases share.)

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

Both of LD3's parameter sets are learnt, in its two phases (its ``training_rounds_v1`` = 2 and
``training_rounds_v2`` = 5 rounds; here ``rounds_v1`` of the ``epochs``). Phase 1 learns ``θ``
alone. Phase 2 adds the decoupled evaluation times ``ξ ∈ R^n`` (LD3's ``params2``): the solver
still steps over ``σ_0 .. σ_n``, but the model of step ``i`` is evaluated at ``σ'_i`` with

    λ'_i = λ_i + clip(ξ_i, ±w·min_k |λ_{k+1} − λ_k|),  ξ_0 ≡ 0,    λ = −log σ,

(``w = window``, LD3's ``win_rate`` = 0.5), learnt by SGD at ``lr2 / n`` (LD3's ``lr_time_2 / steps``)
with its own gradient clipped to norm 1. Each round (epoch) after the first starts from the
best parameters so far, as LD3's ``_train_one_round`` does. An ``ays-schedule/1`` file holds the
step levels only; the evaluation levels are recorded in the last history entry
(``eval_sigmas``, :func:`eval_sigmas_of`) and :func:`decoupled` makes the denoiser that uses
them, so that any ays solver samples as LD3 does. Sampled from the file alone (without
``ξ``), a phase-2 schedule is LD3's ``θ`` as co-trained with ``ξ``.

The radius is LD3's code's (``adjust_hyper``: ``prior_bound = 0.001·res²·channels/steps²`` on the
unit noise, ``fix_bound`` false), i.e. ``0.001·d/n²``: for 2-D data at 10 steps 2e-5, a
no-op there as in LD3, for 28×28 images 0.0078 (unit noise of norm about 28). The feature loss
for images in place of LPIPS is ``features="mnist"`` (the mnist classifier's 64 penultimate
features, those of :func:`ays.metrics.mnist.mnist_features`, here with their gradient) or
``"digits"`` for the 8×8 digits; any differentiable callable works.

Honest differences from LD3: the validation loss uses the original noises (LD3 also moves the
held-out noises inside their balls, one more forward and backward pass per held-out noise per
round, and halves ``shift_lr`` after a round in which none moved); LD3's lambda-mode window is
``w`` times the smallest difference of the raw parameters ``θ`` (zero at its start, where every
``θ_i`` is 1), here ``w`` times the smallest step in ``λ``, which is its time-mode rule applied in
``λ`` and keeps each ``σ'_i`` between the midpoints of its neighbours; ``early_stopping=True``
stops once the learning rate of ``θ`` has decayed to ``min_lr``, ``False`` runs every epoch.
Schedules are sampled with their last level replaced by 0 (:func:`ays.schedules.to_sampling`),
so the student's last step is the final denoise and the learnt levels are ``σ_1 .. σ_{n−1}``
(and ``σ'_1 .. σ'_{n−1}``). For a stochastic target the student is its ODE counterpart
(:data:`ays.optimize.oss.ODE_COUNTERPART`), the teacher an ODE run, as in LD3 (an ODE method).

LD3 backpropagates through the denoiser: one that works in place or without a graph is an
:class:`~ays.validate.AysError` that says so and names the methods that need forward calls only.

Denoiser calls: ``calls = forward + 2 · backward``. A backward pass through the denoiser is
counted as two forward calls (the usual cost of a reverse-mode pass: one product with each of
the two Jacobians per layer). ``forward``: the teacher (``B × teacher_steps``), every student
run (training, the re-evaluation of moved starts, validation); ``backward``: the rows of every
training run. The result's history records both.

Budget and stages: the plan (meter stages ``"teacher"``, ``"train"``, ``"validate"``) counts
model rows, i.e. forward calls; ``budget=`` is charged ``calls`` as above. The validation is
bounded: unless ``eval_every`` is given, the parameters are validated every ``e`` optimiser
steps, ``e`` the least for which validation costs at most ``valid_share`` (default 0.5) of all
calls (LD3's code validates after every step, 87 % of its calls at its 50 + 50 noises). Unless
given, ``teacher_samples`` is the largest count whose run at every epoch fits the budget (half
of it held out unless ``valid_samples`` is given); early stopping only spends less.

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

__all__ = [
    "BACKWARD_FACTOR", "FEATURES", "Ld3Options", "decoupled", "eval_sigmas_of", "evaluation_factors", "ld3",
    "logits_for", "project", "schedule_from_logits",
]

Tensor = torch.Tensor
#: Forward-call equivalents charged for one backward pass through the denoiser.
BACKWARD_FACTOR = 2
#: Named feature maps for ``features=``, the image losses in place of LPIPS: the classifiers' features.
FEATURES = ("mnist", "digits")


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


def evaluation_factors(xi: Tensor, sigmas: Tensor, window: float) -> Tensor:
    """``σ'_i / σ_i = exp(−clip(ξ_i, ±w·min_k Δλ_k))`` for ``i = 0 .. n−1``, ``ξ_0`` held at 0 (differentiable in ξ).

    ``sigmas``: the ``n + 1`` positive step levels; the window is taken on their detached copy,
    as LD3 clones its levels before it clips ``params2``.
    """
    gap = float((sigmas[:-1].log() - sigmas[1:].log()).detach().abs().min()) * window
    mask = torch.ones_like(xi)
    mask[0] = 0.0
    return torch.exp(-xi.clamp(-gap, gap) * mask)


def decoupled(denoiser: Callable[..., Tensor], levels: Tensor, factors: Tensor) -> Callable[..., Tensor]:
    """The denoiser that, called at the level ``levels[i]``, evaluates the model at ``levels[i]·factors[i]``.

    ``levels``: the sampling levels (ending in 0); ``factors``: one per positive level
    (:func:`evaluation_factors`, or ``eval_sigmas / sigmas[:-1]``). Any other level is passed on
    unchanged. With it any ays solver samples as LD3 samples with both parameter sets.
    """
    keys = levels.detach()[: factors.numel()]

    def shifted(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        # the level as the solver hands it over: in the data's dtype (float32 rounds it), so the
        # nearest key within float32's resolution, not equality
        s = sigma.detach().reshape(-1)[0].to(keys.dtype)
        gap = (keys - s).abs() / keys
        k = int(gap.argmin())
        if float(gap[k]) <= 1e-6:
            sigma = sigma * factors[k].to(sigma.dtype)
        return denoiser(x, sigma, **cond)

    return shifted


def eval_sigmas_of(result: OptimizeResult) -> Tensor | None:
    """The levels at which an ld3 result evaluates the model (its second parameter set), or None."""
    last = result.history[-1] if result.history else {}
    e = last.get("eval_sigmas")
    return None if e is None else torch.tensor(e, dtype=torch.float64)


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
    rounds_v1: int = 2  #: epochs of phase 1 (θ alone) before phase 2 adds ξ (LD3's training_rounds_v1)
    decoupled: bool = True  #: learn the second parameter set ξ in phase 2 (False: θ alone throughout)
    lr2: float = 0.1  #: SGD learning rate of ξ times n (LD3's lr_time_2, divided by the steps)
    min_lr2: float = 1e-6  #: the floor of ξ's learning rate (LD3's min_lr_time_2)
    window: float = 0.5  #: ξ's bound, in smallest steps of λ (LD3's win_rate)
    eval_every: int | None = None  #: steps between validations (None: the least within valid_share; LD3: 1)
    valid_share: float = 0.5  #: at most this share of all calls goes to validation when eval_every is None
    patience: int = 5  #: validations without improvement before the best is restored and lr decays
    lr_decay: float = 0.8
    min_lr: float = 5e-5
    #: feature map for the loss: a callable, "mnist" or "digits" (the classifier's features); None: L2 on samples
    features: Callable[[Tensor], Tensor] | str | None = None

    @classmethod
    def parse(cls, options: dict[str, Any]) -> Ld3Options:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AysError(
                f"unknown option(s) for method 'ld3': {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        opt = cls(**options)
        for name in ("teacher_steps", "teacher_samples", "batch", "epochs", "patience"):
            check_steps(getattr(opt, name), name=name)
        if opt.eval_every is not None:
            check_steps(opt.eval_every, name="eval_every")
        check_steps(opt.rounds_v1, name="rounds_v1", minimum=0)
        if not isinstance(opt.decoupled, bool):
            raise AysError(f"decoupled must be true or false, got {opt.decoupled!r}")
        for name in ("lr2", "min_lr2", "valid_share"):
            check_positive(getattr(opt, name), name=name)
        check_positive(opt.window, name="window", allow_zero=True)
        if opt.valid_share > 1:
            raise AysError(f"valid_share must be at most 1, got {opt.valid_share}")
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
        if isinstance(opt.features, str):
            if opt.features not in FEATURES:
                raise AysError(f"unknown features {opt.features!r}; choose one of: {', '.join(FEATURES)}, "
                               "or pass a callable features(x) -> tensor")
        elif opt.features is not None and not callable(opt.features):
            raise AysError(f"features must be a callable features(x) -> tensor, got {type(opt.features).__name__}")
        if not isinstance(opt.teacher, str) or solvers.info(opt.teacher).stochastic:
            raise AysError(f"teacher must be a deterministic solver, got {opt.teacher!r}")
        return opt

    def record(self) -> dict[str, Any]:
        """JSON-able settings: the feature map by name."""
        out = asdict(self)
        f = self.features
        out["features"] = f if f is None or isinstance(f, str) else getattr(f, "__qualname__", type(f).__name__)
        return out

    def feature_map(self) -> Callable[[Tensor], Tensor] | None:
        """``features`` as a function: a named one is its classifier's penultimate layer, kept
        differentiable (the metrics' own ``mnist_features`` detach: they score, this is a loss)."""
        if not isinstance(self.features, str):
            return self.features
        if self.features == "mnist":
            from ..metrics.mnist import load_mnist_classifier as load

            side = 28
        else:
            from ..metrics.digits import load_digits_classifier as load

            side = 8
        net = load()[0]

        def classifier_features(x: Tensor) -> Tensor:
            p = next(net.parameters())
            return net.features(x.reshape(-1, 1, side, side).to(p.device, p.dtype)).to(x.dtype)

        return classifier_features


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
    validation, one every ``eval_every`` optimiser steps (the least within ``valid_share`` of
    all calls unless given); ``backward``: one per training row.
    """
    n_train = noises - valid
    if steps < 2 or n_train < 1:  # one step: nothing to learn
        return {"teacher": noises * c_teacher, "train": 0, "validate": 0, "backward": 0, "valid_samples": valid,
                "eval_every": 1}
    updates = opt.epochs * -(-n_train // opt.batch)
    train = opt.epochs * n_train * c_student
    rest = noises * c_teacher + train * (2 if moves else 1) + BACKWARD_FACTOR * train
    every = opt.eval_every
    if every is None:  # validation v / (rest + v) <= share  <=>  v <= rest · share / (1 − share)
        allowed = math.inf if opt.valid_share >= 1 else rest * opt.valid_share / (1 - opt.valid_share)
        every = 1
        while valid and (updates // every) * valid * c_student > allowed and every < updates:
            every += 1
    return {"teacher": noises * c_teacher, "train": train * (2 if moves else 1),
            "validate": (updates // every) * valid * c_student if valid else 0,
            "backward": train, "valid_samples": valid, "eval_every": every}


_NOT_DIFFERENTIABLE = ("modified by an inplace operation", "does not require grad", "does not have a grad_fn")


def _gradients(loss: Tensor, wrt: list[Tensor], features: bool) -> tuple[Tensor, ...]:
    """``∂loss/∂wrt``, or an AysError when the denoiser (or the features) cannot be backpropagated through."""
    try:
        # A parameter the graph does not reach (ξ, for a model that reads its level as an index) has gradient 0.
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        return tuple(torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True))
    except RuntimeError as e:
        if not any(m in str(e) for m in _NOT_DIFFERENTIABLE):
            raise
        what = "the denoiser or the features are" if features else "this denoiser is"
        raise AysError(
            f"method 'ld3' backpropagates through the denoiser, and {what} not differentiable "
            "(it works in place or without autograd); give a differentiable one, or use a method that "
            "needs forward calls only: 'oss', 'gits' or the default 'ays'"
        ) from None


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
    every = planned["eval_every"]
    features = opt.feature_map()
    settings = task.settings({**opt.record(), "student_solver": student, "resolved_radius": radius,
                              "resolved_shift_lr": shift_lr, "resolved_eval_every": every,
                              "backward_factor": BACKWARD_FACTOR})
    task.meter.plan({k: planned[k] for k in ("teacher", "train", "validate")})
    gen = torch.Generator().manual_seed(seed_for(task.seed, "ld3", "noise"))
    noise = torch.randn((opt.teacher_samples, *probe.shape[1:]), generator=gen, dtype=probe.dtype).to(probe.device)
    # each noise is denoised under the conditioning of a data row of its own (ays.data)
    g_cond = torch.Generator().manual_seed(seed_for(task.seed, "ld3", "cond"))
    cond = conditioning(task.data, opt.teacher_samples, g_cond, probe_cond)
    cond = to(cond, probe.device)
    count = _Counter()
    rows = opt.teacher_samples if task.batch_size is None else task.batch_size

    def run(theta: Tensor, xi: Tensor | None, z: Tensor, c: Cond, counted: bool = True) -> Tensor:
        """The student's samples from starts ``z`` under conditioning ``c`` (in chunks of the batch size),
        the model evaluated at the levels ``ξ`` shifts (phase 2); counts forward rows unless the caller
        counts them (a shared-out run)."""
        steps_at = schedule_from_logits(theta, lo, hi)
        levels = sampling_form(steps_at)
        outs = [z[:0]]
        for a in range(0, z.shape[0], rows):
            den = bind(task.denoiser, take(c, slice(a, a + rows)))
            if xi is not None:
                den = decoupled(den, levels, evaluation_factors(xi, steps_at, opt.window))
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

    def valid_loss(theta_now: Tensor, xi_now: Tensor | None) -> float:
        """Mean held-out loss; its rows are shared out across ranks and gathered (exact)."""

        def share(ks: slice) -> Tensor:
            if ks.stop == ks.start:
                return torch.zeros(0, dtype=torch.float64)
            out = run(theta_now, xi_now, z_valid[ks], take(c_valid, ks), counted=False)
            return _loss(out, y_valid[ks], features)

        with task.meter.stage("validate"):
            per = _dist.map_shards(opt.valid_samples, share, dim=0)
        count.forward += opt.valid_samples * c_student
        return float(per.mean())

    init = task.initial(n) if task.init is not None else schedules.loglinear(n, lo, hi)
    theta = logits_for(init).clone().requires_grad_(True)
    xi = torch.zeros(n, dtype=theta.dtype, requires_grad=True)  # LD3's params2, zero at the start
    optim = torch.optim.RMSprop([theta], lr=opt.lr, momentum=opt.momentum)
    optim2 = torch.optim.SGD([xi], lr=opt.lr2 / n)
    starts = z_train.clone()  # the relaxed starts z', kept across epochs as LD3 keeps its latents
    shuffle = torch.Generator().manual_seed(seed_for(task.seed, "ld3", "shuffle"))
    best_loss, best_theta, best_xi, bad, step = math.inf, theta.detach().clone(), xi.detach().clone(), 0, 0
    history: list[dict[str, Any]] = []
    stop = n < 2  # one step: nothing to learn
    for epoch in range(opt.epochs):
        if stop:
            break
        phase2 = opt.decoupled and epoch >= opt.rounds_v1 and n >= 2
        if epoch > 0 and opt.valid_samples and best_loss < math.inf:  # each round starts from the best (LD3)
            with torch.no_grad():
                theta.copy_(best_theta)
                xi.copy_(best_xi)
            bad = 0
        train_losses = []
        for idx in torch.randperm(n_train, generator=shuffle).split(opt.batch):
            z_b = starts[idx].clone().requires_grad_(radius > 0)
            xi_now = xi if phase2 else None
            wrt = [theta] + ([xi] if phase2 else []) + ([z_b] if radius > 0 else [])
            # Training is replicated on every rank (module docstring): the stage's calls are each rank's.
            with task.meter.stage("train", calls=planned["train"] * world), torch.enable_grad():
                per = _loss(run(theta, xi_now, z_b, take(c_train, idx)), y_train[idx], features)
                loss = per.mean()
                grads = _gradients(loss, wrt, features is not None)
            count.backward += idx.numel() * c_student
            train_losses.append(float(loss))
            theta.grad = grads[0]
            torch.nn.utils.clip_grad_norm_([theta], 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            if phase2:
                xi.grad = grads[1]
                torch.nn.utils.clip_grad_norm_([xi], 1.0)
                optim2.step()
                optim2.zero_grad(set_to_none=True)
            if radius > 0:
                cand = project(z_b.detach() - shift_lr * grads[-1], z_train[idx], radius)
                with task.meter.stage("train", calls=planned["train"] * world):
                    moved = run(theta.detach(), xi.detach() if phase2 else None, cand, take(c_train, idx))
                better = _loss(moved, y_train[idx], features) < per.detach()
                starts[idx] = torch.where(better.reshape(-1, *([1] * (cand.ndim - 1))), cand, starts[idx])
            step += 1
            if opt.valid_samples and step % every == 0:
                v = valid_loss(theta.detach(), xi.detach() if phase2 else None)
                if v < best_loss:
                    best_loss, best_theta, best_xi, bad = v, theta.detach().clone(), xi.detach().clone(), 0
                else:
                    bad += 1
                if bad >= opt.patience:
                    with torch.no_grad():
                        theta.copy_(best_theta)
                        xi.copy_(best_xi)
                    lr_now = optim.param_groups[0]["lr"]
                    optim.param_groups[0]["lr"] = max(lr_now * opt.lr_decay, opt.min_lr)
                    if phase2:
                        optim2.param_groups[0]["lr"] = max(optim2.param_groups[0]["lr"] * opt.lr_decay, opt.min_lr2)
                    bad = 0
                    if task.early_stopping and lr_now <= opt.min_lr:
                        stop = True
                        break
        keep = best_theta if opt.valid_samples else theta.detach()
        sig = schedule_from_logits(keep, lo, hi)
        entry = {"stage": "ld3", "steps": n, "sweep": epoch, "phase": 2 if phase2 else 1,
                 "train_loss": sum(train_losses) / len(train_losses),
                 "valid_loss": best_loss if opt.valid_samples else None, "lr": optim.param_groups[0]["lr"],
                 "lr2": optim2.param_groups[0]["lr"] if phase2 else None,
                 "shift": float((starts - z_train).reshape(n_train, -1).norm(dim=1).max()),
                 "forward": count.forward, "backward": count.backward, "calls": count.calls,
                 "sigmas": sig.tolist()}
        history.append(entry)
        if task.progress is not None:
            task.progress({"event": "sweep", "klub": None, **entry})
    final, final_xi = (best_theta, best_xi) if opt.valid_samples else (theta.detach(), xi.detach())
    sigmas = schedule_from_logits(final, lo, hi).detach() if n >= 2 else init
    eval_sigmas = None
    if n >= 2 and bool(final_xi.abs().max() > 0):
        eval_sigmas = (sigmas[:-1] * evaluation_factors(final_xi, sigmas, opt.window)).tolist()
    sigmas = check_sigmas(task.space.snap(sigmas, f"{n}-step schedule"), allow_final_zero=False)
    history.append({"stage": "ld3", "steps": n, "forward": count.forward, "backward": count.backward,
                    "calls": count.calls, "sigmas": sigmas.tolist(), "eval_sigmas": eval_sigmas})
    if task.progress is not None:
        task.progress({"event": "done", "klub": None, "calls": count.calls, "sigmas": sigmas.tolist()})
    return OptimizeResult(
        sigmas=sigmas, steps=n, solver=task.solver, method=task.method, timesteps=task.space.timesteps(sigmas),
        history=history, calls=count.calls, settings=settings, model=task.model,
    )
