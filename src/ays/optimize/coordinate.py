"""The paper's optimiser: coordinate-wise search on the KLUB (AYS, Alg. 1).

One *sweep* visits every free interior point of the schedule. For point ``i``
with neighbours ``s_{i+1} < s_i < s_{i-1}`` it evaluates ``candidates`` (11 in
the paper) values, the current one among them, on the KLUB of its two
neighbouring intervals ``[s_{i+1}, s] + [s, s_{i-1}]`` and keeps the best.

Choices the paper leaves open, made here:

- **Candidate grid.** In log-sigma, with ``p`` the point's fractional position
  in the gap to its neighbours and ``r`` its search radius: 5 candidates below
  at ``p − r·p·j/6`` and 5 above at ``p + r·(1 − p)·j/6``, ``j = 1..5``, plus the
  current value, so a point moves at most ``5r/6`` of the way to a neighbour per
  sweep. ``r`` starts at ``radius``, halves when the current value wins, doubles
  (up to ``radius``) when an outermost candidate wins, and stays otherwise: the
  grid shrinks as the search settles and widens while it travels. ``radius``
  defaults to 0.3 with early stopping (a gentle path from the initial schedule
  to the KLUB minimiser, on which the stopping point matters less) and to 1
  without (only the end point counts, so travel fast).
- **Batching.** Non-adjacent points do not share an interval, so all even
  points are updated together, then all odd points; each half-sweep is one
  batch of denoiser calls (``batch_size`` rows each).
- **Common random numbers.** All candidates of a stage are compared on the same
  draws (``x0, z1, z2, u``), derived from ``(seed, "train", stage)``: the
  objective is then one smooth function (a sample-average approximation), each
  accepted move lowers it, and the search converges. ``redraw=True`` draws
  afresh every sweep from ``(seed, "train", stage, sweep)`` instead.
- **Early stopping** (``early_stopping=True``, the default): a budget of
  ``max_sweeps`` (8) sweeps in the first stage (``refine_sweeps``, 8, in later
  ones), cut short when the KLUB on held-out draws ``(seed, "heldout", stage)``
  has not improved for ``patience`` sweeps that moved a point; a stage returns
  its best held-out schedule. The converged KLUB minimiser over-aligns (one
  giant first step, dropped modes; REFERENCES.md), which is why the paper stops
  early. The defaults (radius 0.3, 8 sweeps) were chosen on the paper's toy
  problems with exact denoisers: they beat EDM rho=7 and log-linear on both
  NLL and sliced W2 in 8 of 9 cells (gmm-8x8/8x4/6x6 at 6, 8, 10 steps), while
  the converged minimiser loses on sliced W2 in every cell; see
  BENCHMARKS.md (section 5) for the numbers. With ``early_stopping=False`` each
  stage runs until a sweep moves no point and every radius is below ``tol``
  (or ``converge_sweeps``): the KLUB minimiser.
- **Hierarchy.** ``steps <= base_steps`` (10): optimise at ``steps`` directly.
  Otherwise optimise ``base_steps``, then double by log-midpoint subdivision
  (:func:`ays.schedules.subdivide`), optimising only the new points, up to the
  first count ``>= steps``, and interpolate log-linearly
  (:func:`ays.schedules.interpolate`) when that count is not ``steps``
  (e.g. 15 steps: optimise 10, then 20, interpolate 20 -> 15).
- **Discrete-time models**: candidates snap to the model's timesteps (plus the
  two timesteps next to the current one); the result carries ``timesteps``.

**Budget** (``budget=``): ``samples`` per estimate is the largest count for which every stage
at its sweep cap (``max_sweeps``, ``refine_sweeps``: each sweep ``4 × tried values × samples``
rows per free point plus ``4n × samples`` for its two estimates), the estimates that start the
stages and the final estimate fit the budget: a bound with early stopping, which only spends
less. Without early stopping the sweep count cannot be bounded in advance: the sweeps are
sized the same way, and a stage stops (``"stop": "calls_budget"``) as soon as one more sweep
would leave too little for the later stages and the final estimate. Meter stages:
``"search"`` (the plan is that bound) and ``"final"``.

Randomness is derived from ``(seed, purpose, stage[, sweep])`` only, so a run
resumed from a checkpoint ends with exactly the schedule of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .. import schedules
from ..klub import KlubDraws, KlubEstimate, estimate_schedule, interval_klub
from ..validate import AysError, check_positive, check_steps
from .checkpoint import load_state, save_state
from .dp import fit_budget
from .result import OptimizeResult
from .task import LevelSpace, Task, register, stage_plan

__all__ = ["CoordinateOptions", "coordinate"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class CoordinateOptions:
    """Options of the ``coordinate`` method (``ays.optimize(..., method="coordinate", **options)``)."""

    candidates: int = 11  #: values tried per point per sweep, the current one included (odd)
    max_sweeps: int = 8  #: sweep budget of the first stage with early stopping
    refine_sweeps: int = 8  #: sweep budget of each later (subdivision) stage with early stopping
    patience: int = 3  #: stop a stage after this many sweeps without held-out improvement
    base_steps: int = 10  #: step count of the first stage when steps > base_steps
    c: float = 0.5  #: scale of the importance-sampling proposal (paper: 0.5)
    tol: float = 1e-3  #: radius (fraction of a gap) below which a point counts as settled
    converge_sweeps: int = 1000  #: sweep cap per stage without early stopping
    redraw: bool = False  #: fresh optimisation draws every sweep instead of once per stage
    #: starting (and largest) search radius, as a fraction of the way to a neighbour;
    #: None: 0.3 with early stopping (a gentle path to stop on), 1.0 without (fastest convergence)
    radius: float | None = None

    @classmethod
    def parse(cls, options: dict[str, Any], early_stopping: bool = True) -> CoordinateOptions:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise AysError(
                f"unknown option(s) for method 'coordinate': {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(known))}"
            )
        opt = cls(**options)
        for name in ("max_sweeps", "refine_sweeps", "patience", "base_steps", "converge_sweeps"):
            check_steps(getattr(opt, name), name=name)
        k = check_steps(opt.candidates, name="candidates", minimum=3)
        if k % 2 == 0:
            raise AysError(f"candidates must be odd (the current value plus as many below as above), got {k}")
        check_positive(opt.c, name="c")
        check_positive(opt.tol, name="tol")
        if opt.radius is None:
            opt = cls(**{**asdict(opt), "radius": 0.3 if early_stopping else 1.0})
        if isinstance(opt.radius, bool) or not isinstance(opt.radius, (int, float)) or not 0 < opt.radius <= 1:
            raise AysError(f"radius must lie in (0, 1], got {opt.radius!r}")
        if not isinstance(opt.redraw, bool):
            raise AysError(f"redraw must be True or False, got {opt.redraw!r}")
        return cls(**{**asdict(opt), "c": float(opt.c), "tol": float(opt.tol), "radius": float(opt.radius)})


def _candidates(
    space: LevelSpace, lo: float, cur: float, hi: float, radius: float, half: int
) -> tuple[Tensor, list[int]]:
    """Candidate values for a point between ``lo`` and ``hi`` and their signed grid index.

    Index 0 is the current value, ``-j``/``+j`` the j-th candidate below/above.
    """
    span = math.log(hi) - math.log(lo)
    p = (math.log(cur) - math.log(lo)) / span
    frac = [j / (half + 1) for j in range(1, half + 1)]
    pos = [p] + [p - radius * p * f for f in frac] + [p + radius * (1 - p) * f for f in frac]
    js = [0] + [-j for j in range(1, half + 1)] + list(range(1, half + 1))
    cand = torch.exp(math.log(lo) + torch.tensor(pos, dtype=torch.float64) * span)
    if not space.is_discrete:
        cand[0] = cur  # exactly, not through exp(log(.))
        return cand, js
    # Discrete-time model: snap to timesteps, add the two next to the current
    # one (so the search can always take the smallest move), keep those strictly
    # between the neighbours, first occurrence wins (the current value first).
    ends = space.index(torch.tensor([lo, cur, hi], dtype=torch.float64))
    t_lo, t_cur, t_hi = (int(v) for v in ends)
    ts = [*space.index(cand).tolist(), t_cur - 1, t_cur + 1]
    js = [*js, -1, 1]
    keep_t: list[int] = []
    keep_j: list[int] = []
    for t, j in zip(ts, js):
        if t_lo < t < t_hi and t not in keep_t:
            keep_t.append(int(t))
            keep_j.append(j)
    return space.level(torch.tensor(keep_t, dtype=torch.long)), keep_j


class _Run:
    """One optimisation: state handling, draws, sweeps, checkpoints."""

    def __init__(self, task: Task, opt: CoordinateOptions) -> None:
        self.task, self.opt = task, opt
        self.space = task.space
        self.plan = stage_plan(task.steps, min(opt.base_steps, task.steps))
        self.half = (opt.candidates - 1) // 2
        # Values tried per point: the candidates, plus the two neighbouring timesteps of a discrete model.
        self.tried = opt.candidates + (2 if task.space.is_discrete else 0)
        if task.budget is not None:
            samples = fit_budget(lambda m: self.expected(m)[0], task.budget, 2, "coordinate", "samples per estimate")
            self.task = dataclasses.replace(task, samples=samples)  # the same meter: one plan, one count
        self.settings = self.task.settings(asdict(opt))
        assert opt.radius is not None
        self.max_radius = float(opt.radius)
        self._draws: dict[tuple[Any, ...], KlubDraws] = {}

    # -- calls -----------------------------------------------------------
    def stage_calls(self, stage: int, samples: int) -> tuple[int, int]:
        """(the estimates that start a stage, one sweep at most) in calls, for ``samples`` per estimate.

        ``interval_klub`` spends 2 rows per interval and draw; a point tries ``self.tried`` values
        (at most), each scored on its two intervals; every sweep ends with the train and held-out
        estimates of the whole schedule (``2 × 2n`` rows per draw).
        """
        n = self.plan[stage]
        estimates = 2 * 2 * n * samples
        return estimates, len(self.free(stage, n)) * 2 * 2 * self.tried * samples + estimates

    def sweeps(self, stage: int) -> int:
        """Sweeps a stage is sized for: its cap with early stopping, else its early-stopping cap as the expectation."""
        return self.opt.max_sweeps if stage == 0 else self.opt.refine_sweeps

    def expected(self, samples: int) -> tuple[int, list[int], int]:
        """(total, calls of each stage, final) for ``samples`` per estimate: an upper bound with early stopping."""
        per_stage = []
        for st in range(len(self.plan)):
            start, sweep = self.stage_calls(st, samples)
            per_stage.append(start + self.sweeps(st) * sweep)
        final = 2 * self.task.steps * samples
        return sum(per_stage) + final, per_stage, final

    def over_budget(self, state: dict[str, Any]) -> bool:
        """Would one more sweep leave too little of ``budget`` for the later stages and the final estimate?"""
        if self.task.budget is None:
            return False
        _, per_stage, final = self.expected(self.task.samples)
        stage = state["stage"]
        reserve = sum(per_stage[stage + 1 :]) + final
        return state["calls"] + self.stage_calls(stage, self.task.samples)[1] + reserve > self.task.budget

    # -- randomness ------------------------------------------------------
    def draws(self, *key: Any) -> KlubDraws:
        if key not in self._draws:
            if len(self._draws) > 4:  # keep memory bounded: only the current stage's draws matter
                self._draws.clear()
            self._draws[key] = KlubDraws.from_seed(self.task.data, self.task.samples, self.task.seed, *key)
        return self._draws[key]

    def train_draws(self, stage: int, sweep: int) -> KlubDraws:
        return self.draws("train", stage, sweep) if self.opt.redraw else self.draws("train", stage)

    def estimate(self, draws: KlubDraws, sigmas: Tensor) -> KlubEstimate:
        return estimate_schedule(self.task.denoiser, draws, sigmas, c=self.opt.c, batch_size=self.task.batch_size)

    # -- stages ----------------------------------------------------------
    def free(self, stage: int, n: int) -> list[int]:
        # First stage: every interior point. Subdivision stages: only the new (odd) points.
        return list(range(1, n)) if stage == 0 else list(range(1, n, 2))

    def budget(self, stage: int) -> int:
        if not self.task.early_stopping:
            return self.opt.converge_sweeps
        return self.opt.max_sweeps if stage == 0 else self.opt.refine_sweeps

    def start_stage(self, stage: int, sigmas: Tensor, base: dict[str, Any]) -> dict[str, Any]:
        n = sigmas.numel() - 1
        free = self.free(stage, n)
        radius = [self.max_radius if i in free else 0.0 for i in range(n + 1)]
        state = {
            **base,
            "stage": stage,
            "sweep": 0,
            "sigmas": sigmas.tolist(),
            "radius": radius,
            "best_sigmas": sigmas.tolist(),
            "best_heldout": None,
            "wait": 0,
            "stop": None,
        }
        return self.finish_sweep(state, sigmas, moved=0)

    def finish_sweep(self, state: dict[str, Any], sigmas: Tensor, moved: int) -> dict[str, Any]:
        """Estimate, record, decide on stopping, checkpoint, report."""
        stage, sweep = state["stage"], state["sweep"]
        train = self.estimate(self.train_draws(stage, sweep), sigmas)
        held = self.estimate(self.draws("heldout", stage), sigmas)
        state["calls"] += train.calls + held.calls
        state["sigmas"] = sigmas.tolist()
        free = self.free(stage, sigmas.numel() - 1)
        settled = max((state["radius"][i] for i in free), default=0.0) <= self.opt.tol
        converged = not free or (sweep > 0 and moved == 0 and settled)
        if self.task.early_stopping:
            if state["best_heldout"] is None or held.total < state["best_heldout"]:
                state["best_sigmas"], state["best_heldout"], state["wait"] = sigmas.tolist(), held.total, 0
            elif moved:
                # Only a sweep that changed the schedule and got no better counts: a
                # sweep that moved nothing just narrowed the search grid.
                state["wait"] += 1
            if converged:
                state["stop"] = "converged"
            elif state["wait"] >= self.opt.patience:
                state["stop"] = "patience"
            elif sweep >= self.budget(stage):
                state["stop"] = "budget"
        else:
            state["best_sigmas"], state["best_heldout"] = sigmas.tolist(), held.total
            if converged:
                state["stop"] = "converged"
            elif sweep >= self.budget(stage):
                state["stop"] = "max_sweeps"
        entry = {
            "stage": stage,
            "steps": sigmas.numel() - 1,
            "sweep": sweep,
            "klub": train.total,
            "klub_stderr": train.total_stderr,
            "heldout": held.total,
            "heldout_stderr": held.total_stderr,
            "moved": moved,
            "radius": max((state["radius"][i] for i in free), default=0.0),
            "calls": state["calls"],
            "stop": state["stop"],
            "sigmas": sigmas.tolist(),
        }
        state["history"].append(entry)
        path = self.task.checkpoint_path()
        if path is not None:
            save_state(path, self.settings, state)
        if self.task.progress is not None:
            self.task.progress({"event": "sweep", "stages": len(self.plan), "budget": self.budget(stage), **entry})
        return state

    def sweep(self, state: dict[str, Any]) -> dict[str, Any]:
        """One sweep: even points together, then odd points together."""
        stage = state["stage"]
        state["sweep"] += 1
        draws = self.train_draws(stage, state["sweep"])
        s = torch.tensor(state["sigmas"], dtype=torch.float64)
        radius = state["radius"]
        free = self.free(stage, s.numel() - 1)
        moved = 0
        for parity in (0, 1):
            group = [i for i in free if i % 2 == parity]
            if not group:
                continue
            cands: list[tuple[int, Tensor, list[int]]] = []
            lower: list[Tensor] = []
            upper: list[Tensor] = []
            for i in group:
                lo, cur, hi = float(s[i + 1]), float(s[i]), float(s[i - 1])
                cand, js = _candidates(self.space, lo, cur, hi, radius[i], self.half)
                cands.append((i, cand, js))
                k = cand.numel()
                lower += [torch.full((k,), lo, dtype=torch.float64), cand]  # [s_{i+1}, s]
                upper += [cand, torch.full((k,), hi, dtype=torch.float64)]  # [s, s_{i-1}]
            est = interval_klub(
                self.task.denoiser, draws, torch.cat(lower), torch.cat(upper), c=self.opt.c,
                batch_size=self.task.batch_size,
            )
            state["calls"] += est.calls
            offset = 0
            for i, cand, js in cands:
                k = cand.numel()
                cost = est.mean[offset : offset + k] + est.mean[offset + k : offset + 2 * k]
                offset += 2 * k
                best = int(torch.argmin(cost))  # ties go to the first: the current value
                j = js[best]
                if j == 0:
                    radius[i] *= 0.5
                else:
                    moved += 1
                    s[i] = cand[best]
                    if abs(j) == self.half:
                        radius[i] = min(self.max_radius, 2.0 * radius[i])
        return self.finish_sweep(state, s, moved)

    # -- driver ----------------------------------------------------------
    def search(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """Every stage's sweeps, from ``state`` (a resumed checkpoint) or from the start; the last state."""
        if state is None:
            state = self.start_stage(0, self.task.initial(self.plan[0]), {"history": [], "calls": 0, "results": []})
        while True:
            if state["stop"] is None and self.over_budget(state):
                state["stop"] = state["history"][-1]["stop"] = "calls_budget"
            if state["stop"] is None:
                state = self.sweep(state)
                continue
            stage = state["stage"]
            chosen = torch.tensor(state["best_sigmas"], dtype=torch.float64)
            if stage + 1 >= len(self.plan):
                return state
            nxt = self.space.snap(schedules.subdivide(chosen), f"{self.plan[stage + 1]}-step schedule")
            results = [*state["results"], chosen.tolist()]
            base = {"history": state["history"], "calls": state["calls"], "results": results}
            state = self.start_stage(stage + 1, nxt, base)

    def run(self) -> OptimizeResult:
        task = self.task
        path = task.checkpoint_path()
        state = load_state(path, self.settings) if (task.resume and path is not None) else None
        total, _, final_planned = self.expected(task.samples)
        task.meter.plan({"search": total - final_planned, "final": final_planned})
        with task.meter.stage("search"):
            state = self.search(state)
        chosen = torch.tensor(state["best_sigmas"], dtype=torch.float64)
        final = chosen
        if final.numel() - 1 != task.steps:
            final = self.space.snap(schedules.interpolate(final, task.steps), f"{task.steps}-step schedule")
        with task.meter.stage("final"):
            est = self.estimate(self.draws("final"), final)
        calls = state["calls"] + est.calls
        if task.progress is not None:
            task.progress({"event": "done", "klub": est.total, "klub_stderr": est.total_stderr, "calls": calls,
                           "sigmas": final.tolist()})
        return OptimizeResult(
            sigmas=final,
            steps=task.steps,
            solver=task.solver,
            method=task.method,
            klub=est.total,
            klub_stderr=est.total_stderr,
            timesteps=self.space.timesteps(final),
            history=state["history"],
            calls=calls,
            settings=self.settings,
            model=task.model,
        )


@register("coordinate")
def coordinate(task: Task, **options: Any) -> OptimizeResult:
    """AYS Alg. 1: coordinate-wise candidate search on the KLUB, with early stopping and subdivision.

    See the module docstring for the choices made; ``options`` are the fields of
    :class:`CoordinateOptions`.
    """
    return _Run(task, CoordinateOptions.parse(options, task.early_stopping)).run()
