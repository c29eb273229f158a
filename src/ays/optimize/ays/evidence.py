"""The evidence of the default method: two noise sets, the teacher's samples from them, the judge, the gate.

**The sets.** ``choose`` (``rows`` noises) and ``validate`` (``fresh`` noises), each row with
the conditioning of a data row of its own and a Brownian tree of its own
(:class:`ays.solvers.brownian.BrownianTree`), so that every run from the same noise row, the
teacher's and every candidate's, shares its Brownian path.

**The teacher.** On the choose set, one probability-flow trajectory
(:func:`ays.optimize.teacher.trajectory`, DPM-Solver++(2M) on the shared grid) whose states
and denoiser outputs also feed OSS's programme and GITS's costs. The judge's target is its
end, the teacher's sample from the same noise, for every target solver: a stochastic solver's
samples are compared with it as a law (``"coupled"``). With ``reference_solver`` (a stochastic
solver) the target is instead ``reference_steps`` steps of that solver from the same noise and
Brownian path, the coupling the per-noise statistics need for a stochastic solver; measured,
the many-step ODE target ranks the schedules of the stochastic solvers better at less cost
(BENCHMARKS.md, "Which evidence"). On the validate set, the same teacher run without its states.

**The statistics** (``select``) compare a schedule's samples ``x_i`` with the teacher's ``t_i``
from the same noises (through ``features`` when given), by the per-noise errors
``e_i = |x_i − t_i|² / d`` (:func:`errors`): ``"paired"`` their mean (an upper bound on W2² by
the coupling, equal to it for an ODE solver on Gaussian data), ``"median"`` their median,
``"trimmed"`` their mean without the top and bottom :data:`TRIM` (a few noises that land in
a neighbouring mode do not decide); or as sets: ``"coupled"`` the sliced W2 distance of the
two sample sets, ``"kernel"`` their MMD² with a Gaussian kernel at the data's local scale
(:func:`local_bandwidth`). Which one the default uses was measured (BENCHMARKS.md, "Which
evidence").

**The gate** (:func:`gain_z`): the gain of one schedule over another on the validate set, in
standard errors from a bootstrap of its noises (schedules and teacher resampled together, so
the coupling is kept).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ... import distributed as _dist
from ... import metrics, schedules, solvers
from ...data import Cond, conditioning, draw, in_batches, take, to
from ...io import atomic_write_bytes
from ...seeds import seed_for
from ...solvers.brownian import BrownianTree
from ...validate import AysError
from ..task import Task
from ..teacher import trajectory, trajectory_calls

__all__ = [
    "STATISTICS", "TRIM", "Evidence", "Judge", "errors", "gain_z", "gather_evidence", "local_bandwidth",
    "precision", "reference_schedule", "run_rows", "statistic", "teacher_calls", "uses_sde_teacher",
]

Tensor = torch.Tensor
Features = Callable[[Tensor], Tensor]

STATISTICS = ("paired", "median", "trimmed", "coupled", "kernel")
TRIM = 0.1  #: share of the per-noise errors left out at each end by "trimmed"
REFERENCE_ROWS = 4096  #: data samples of :func:`precision`


def uses_sde_teacher(reference_solver: str | None) -> bool:
    """Whether the judge's target is a separate run of a stochastic solver (else the ODE trajectory's end)."""
    return reference_solver is not None


def reference_schedule(task: Task, steps: int) -> Tensor:
    """The schedule of a stochastic teacher: rho=7 (time-uniform on a discrete model's own levels)."""
    if task.space.is_discrete:
        s = schedules.time_uniform(steps, task.sigma_min, task.sigma_max, noise=task.noise)
        idx = torch.unique(task.space.index(s))
        return task.space.level(idx).to(torch.float64).flip(0)
    return schedules.karras(steps, task.sigma_min, task.sigma_max, rho=7.0)


def teacher_calls(task: Task, levels: Tensor, refine: int, reference_steps: int, reference_solver: str | None,
                  ) -> tuple[int, int]:
    """Calls per noise of the teacher: (choose set, validate set)."""
    traj = trajectory_calls(levels, "dpmpp_2m", refine)
    if not uses_sde_teacher(reference_solver):
        return traj, traj
    sde = solvers.count_calls(reference_solver,
                              schedules.to_sampling(reference_schedule(task, reference_steps)))
    return traj + sde, sde


def run_rows(
    solver: str, denoiser: Any, noise: Tensor, sigmas: Tensor, rows: slice, tree: BrownianTree,
    batch_size: int | None = None, cond: Cond | None = None,
) -> Tensor:
    """``solver`` on rows ``rows`` of ``noise`` (scaled by ``sigmas[0]``) over ``to_sampling(sigmas)``.

    All solver noise is the Brownian tree's increments, so a run of any schedule from the same
    noise row shares its Brownian path with every other; row i is denoised under ``cond``'s
    row i. The output of row i does not depend on the rest of the batch, which is what lets
    the rows be shared across ranks.
    """
    if rows.stop <= rows.start:  # a rank with no share (more ranks than rows)
        return noise[rows]
    s = schedules.to_sampling(sigmas)
    # One solver run over all the rows, the model called on batches of them: the Brownian tree then
    # draws each node once per run, not once per batch.
    den = in_batches(denoiser, batch_size, take(cond or {}, rows))
    x = solvers.get(solver)(den, noise[rows] * float(s[0]), s, noise_sampler=tree.rows(rows))
    if not torch.isfinite(x).all():
        raise AysError(f"solver {solver!r} produced NaN or inf on a candidate schedule")
    return x


def flat(x: Tensor, features: Features | None = None) -> Tensor:
    """Rows of ``x`` (through ``features``) as float64 vectors."""
    y = x if features is None else features(x)
    return y.reshape(y.shape[0], -1).to(torch.float64)


def errors(x: Tensor, target: Tensor) -> Tensor:
    """Per-noise squared error per dimension ``|x_i − t_i|² / d`` of two flat sample sets: ``[rows]``."""
    return (x - target).square().mean(dim=1)


def precision(x: Tensor, reference: Tensor) -> Tensor:
    """Per sample, the squared distance per dimension to the nearest data sample: ``[rows]``.

    Its mean is the fidelity side of the comparison (the distance behind k-NN precision, Kynkäänniemi
    et al. 2019): a sample between the modes is far from every data sample, one inside a mode is not.
    The sliced W2 is nearly blind to that blur; this costs no denoiser call.
    """
    return torch.cdist(x, reference).min(dim=1).values.square() / x.shape[1]


def local_bandwidth(target: Tensor, max_points: int = 1024) -> float:
    """The data's local scale: the median distance of a teacher sample to its nearest other one."""
    t = target[:: max(1, target.shape[0] // max_points)]
    d = torch.cdist(t, t)
    d.fill_diagonal_(math.inf)
    h = float(d.min(dim=1).values.median())
    return h if h > 0 and math.isfinite(h) else 1.0


def statistic(name: str, x: Tensor, target: Tensor, bandwidth: float, projections: int = 256) -> float:
    """The evidence ``name`` (module docstring) of samples ``x`` against the teacher's ``target`` (both flat)."""
    if name in ("paired", "median", "trimmed"):
        e = errors(x, target)
        if name == "paired":
            return float(e.mean())
        if name == "median":
            return float(e.quantile(0.5))
        k = int(TRIM * e.numel())
        return float(e.sort().values[k : e.numel() - k].mean())
    if name == "coupled":
        return metrics.sliced_w2(x, target, projections=projections, generator=torch.Generator().manual_seed(0)).value
    if name == "kernel":
        return metrics.mmd(x, target, bandwidth=bandwidth)
    raise AysError(f"select must be one of {', '.join(STATISTICS)}, got {name!r}")


def gain_z(name: str, target: Tensor, base: Tensor, other: Tensor, bandwidth: float, seed: int,
           resamples: int = 200, projections: int = 256) -> tuple[float, float]:
    """(gain, z): ``statistic(base) − statistic(other)`` and that gain over its bootstrap standard error.

    The noises are resampled together for the two schedules and the teacher (the coupling kept),
    ``resamples`` times.
    """
    def gain(i: Tensor | slice) -> float:
        return (statistic(name, base[i], target[i], bandwidth, projections)
                - statistic(name, other[i], target[i], bandwidth, projections))

    g = torch.Generator().manual_seed(seed)
    n = base.shape[0]
    rows = torch.stack([torch.randint(0, n, (n,), generator=g) for _ in range(resamples)])
    if name == "coupled":  # each resample's sliced W2 from one sort per set (metrics.sliced_w2_resampled)
        sw = metrics.sliced_w2_resampled([base, other], target, rows, projections=projections,
                                         generator=torch.Generator().manual_seed(0))
        draws = sw[0] - sw[1]
    else:
        draws = torch.tensor([gain(i) for i in rows], dtype=torch.float64)
    se = float(draws.std(unbiased=True))
    whole = gain(slice(None))
    return whole, (whole / se if se > 0 else (math.inf if whole > 0 else 0.0))


def evidence_seconds(task: Task, select: str, rows: int, judged: int, bootstrap: int, projections: int,
                     features: Features | None = None) -> float:
    """The evidence's own work, for the estimate: a sliced W2 per schedule ``judged`` (``coupled``) and the
    gate's ``bootstrap`` resamples, timed on this machine at ``rows`` noises (:func:`ays.metrics.sliced_w2_seconds`)."""
    if select != "coupled" or rows == 0:
        return 0.0
    probe, _ = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "select", "probe")))
    one, resample = metrics.sliced_w2_seconds(rows, flat(probe, features).shape[1], projections)
    return judged * one + bootstrap * resample


@dataclass
class Evidence:
    """One set of noises, their conditioning and Brownian tree, and the teacher's samples (flat) from them.

    ``states``/``dens``: the teacher trajectory on ``levels`` (choose set only; OSS and GITS read them).
    ``reference``: data samples (flat, through the features), the same for both sets (:func:`precision`).
    """

    noise: Tensor
    cond: Cond
    tree: BrownianTree
    target: Tensor
    states: Tensor | None = None
    dens: Tensor | None = None
    reference: Tensor | None = None


def _teacher_file(task: Task) -> Path | None:
    path = task.checkpoint_path()
    return None if path is None else path.with_name(path.name + ".teacher.pt")


def _load_teacher(task: Task, settings: dict[str, Any] | None) -> dict[str, Tensor] | None:
    path = _teacher_file(task)
    if path is None or not task.resume or not path.exists():
        return None

    def read() -> dict[str, Any] | None:
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file is recomputed, not trusted
            return None
        return doc if isinstance(doc, dict) and doc.get("settings") == settings else None

    return _dist.from_rank_zero(read)


def _save_teacher(task: Task, settings: dict[str, Any] | None, sets: tuple[Evidence, Evidence]) -> None:
    path = _teacher_file(task)
    if path is None:
        return
    buf = io.BytesIO()
    torch.save({"settings": settings, "choose": sets[0].target.cpu(), "validate": sets[1].target.cpu(),
                "states": sets[0].states.cpu(), "dens": sets[0].dens.cpu()}, buf)  # type: ignore[union-attr]
    atomic_write_bytes(path, buf.getvalue())


def gather_evidence(task: Task, rows: int, fresh: int, levels: Tensor, refine: int, reference_steps: int,
                    reference_solver: str | None, features: Features | None = None,
                    settings: dict[str, Any] | None = None) -> tuple[Evidence, Evidence, int]:
    """The choose and validate sets with their teacher (module docstring), and the denoiser calls spent
    (0 when the teacher file beside a checkpoint had them)."""
    probe, probe_cond = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "select", "probe")))
    shape, dtype, dev = tuple(probe.shape[1:]), probe.dtype, probe.device
    sde = uses_sde_teacher(reference_solver)
    ref_s = reference_schedule(task, reference_steps)
    saved = _load_teacher(task, settings)

    def normal(n: int, half: str) -> tuple[Tensor, Cond, BrownianTree]:
        g = torch.Generator().manual_seed(seed_for(task.seed, "select", "noise", half))
        cond = conditioning(task.data, n, torch.Generator().manual_seed(seed_for(task.seed, "select", "cond", half)),
                            probe_cond)
        noise = torch.randn((n, *shape), generator=g, dtype=dtype).to(dev)
        tree = BrownianTree((n, *shape), task.sigma_min, task.sigma_max, seed_for(task.seed, "select", "tree", half),
                            dtype=dtype, device=dev)
        return noise, to(cond, dev), tree

    g = levels.numel()
    sets = []
    for half, n in (("choose", rows), ("validate", fresh)):
        noise, cond, tree = normal(n, half)
        if saved is not None:
            sets.append(Evidence(noise, cond, tree, saved[half].to(dev),
                                 *((saved["states"].to(dev), saved["dens"].to(dev)) if half == "choose" else ())))
            continue

        def teach(r: slice, z: Tensor = noise, c: Cond = cond, w: BrownianTree = tree, keep: bool = half == "choose",
                  ) -> Tensor:
            """This rank's rows: trajectory states and outputs stacked ``[2G − 1, rows, ...]`` (choose set),
            then the stochastic teacher's samples when there is one, as one tensor to gather."""
            if r.stop <= r.start:  # a rank with no share (more ranks than rows)
                return z.new_zeros(((2 * g - 1 if keep else 0) + 1, 0, *shape))
            parts = []
            if keep or not sde:
                states, dens, _ = trajectory(task.denoiser, z[r] * float(levels[0]), levels, "dpmpp_2m", refine,
                                             task.batch_size, take(c, r))
                parts += [states, dens] if keep else []
                if not sde:  # the trajectory's end is the target
                    parts.append(states[-1:])
            if sde:
                parts.append(run_rows(reference_solver, task.denoiser, z, ref_s, r, w,  # type: ignore[arg-type]
                                      task.batch_size, c)[None])
            return torch.cat(parts)

        with task.meter.stage("teacher"):
            out = _dist.map_shards(n, teach, dim=1)
        states, dens = (out[:g], out[g : 2 * g - 1]) if half == "choose" else (None, None)
        sets.append(Evidence(noise, cond, tree, flat(out[-1], features), states, dens))
    ref, _ = draw(task.data, REFERENCE_ROWS, torch.Generator().manual_seed(seed_for(task.seed, "select", "reference")))
    sets[0].reference = sets[1].reference = flat(ref.to(dev), features)
    per_choose, per_validate = teacher_calls(task, levels, refine, reference_steps, reference_solver)
    calls = rows * per_choose + fresh * per_validate  # paid once, here or before a resume (the result's calls)
    if saved is None:
        _save_teacher(task, settings, (sets[0], sets[1]))
    return sets[0], sets[1], calls


class Judge:
    """Scores schedules on one evidence set by ``select``; the same noise for all (common random numbers).

    ``scores`` keeps every statistic and mean :func:`precision` by schedule (checkpointed by ``saved()``
    after every schedule judged, so a resumed run judges nothing twice); ``outputs`` the samples of this
    run (the gate resamples them; a schedule whose samples were lost to a resume is run again).
    """

    def __init__(self, task: Task, select: str, ev: Evidence, features: Features | None, bandwidth: float,
                 scores: dict[str, list[float]], saved: Callable[[], None], projections: int = 256) -> None:
        self.task, self.select, self.ev, self.features = task, select, ev, features
        self.bandwidth, self.projections = bandwidth, projections
        self.scores, self.saved = scores, saved
        self.outputs: dict[str, Tensor] = {}
        self.calls = 0  #: rows of every schedule judged, once each, also those a resumed run read back
        self.paid: set[str] = set()

    def samples(self, sigmas: Tensor, stage: str) -> Tensor:
        """The flat samples of a schedule from this set's noises (run again if only its score was saved)."""
        key = repr(sigmas.tolist())
        if key not in self.outputs:
            self.scores.pop(key, None)
            self(sigmas, stage)
        return self.outputs[key]

    def precision(self, sigmas: Tensor, stage: str) -> float:
        """The mean :func:`precision` of the schedule's samples from this set."""
        self(sigmas, stage)
        return self.scores[repr(sigmas.tolist())][1]

    def __call__(self, sigmas: Tensor, stage: str) -> float:
        key = repr(sigmas.tolist())
        ev, task = self.ev, self.task
        n = ev.noise.shape[0]
        if key not in self.paid:  # judged here or before a resume: its cost is the schedule's all the same
            self.calls += n * solvers.count_calls(task.solver, schedules.to_sampling(sigmas))
            self.paid.add(key)
        if key in self.scores:
            return self.scores[key][0]

        def rows_of(rows: slice) -> Tensor:
            return flat(run_rows(task.solver, task.denoiser, ev.noise, sigmas, rows, ev.tree, task.batch_size,
                                 ev.cond), self.features)

        with task.meter.stage(stage):
            x = _dist.map_shards(n, rows_of, dim=0)
        self.outputs[key] = x
        assert ev.reference is not None
        self.scores[key] = [statistic(self.select, x, ev.target, self.bandwidth, self.projections),
                            float(precision(x, ev.reference).mean())]
        self.saved()
        return self.scores[key][0]
