"""Any diffusers pipeline as an ays denoiser, through its own ``__call__`` (no per-family code).

Nearly every diffusers pipeline runs the same loop: it encodes its conditioning (prompts,
images), prepares (and packs) latents, and for each ``t`` of ``scheduler.timesteps`` calls
its network, combines the guidance branches and hands the result to ``scheduler.step``.
The route puts a scheduler of ours in that loop (:class:`ProbeScheduler`):

- its ``timesteps`` are the noise levels ays asks for, in the original scheduler's units;
- its ``step(model_output, t, latents)`` hands ``model_output`` — the network's guided
  prediction, computed by the pipeline's own encoders, packing, guidance and conditioning —
  back to ays, and returns the next latents ays wants evaluated.

The pipeline therefore never finishes: each *server* (one per condition and batch size,
``num_images_per_prompt`` rows) is a ``__call__`` suspended in its own thread inside ``step``
until the next request comes. ays turns the output into ``x0`` with the original scheduler's
parametrisation (:class:`ays.denoisers.ModelDenoiser`, eq. (1) of :func:`ays.denoisers.prediction.conversion`):

- the loop's latents are the model's state ``x_model = alpha(σ)·x`` (VP: ``x/sqrt(1 + σ²)``, what
  Euler's ``scale_model_input`` makes of ``x``; flow: ``x/(1 + σ)``), so ours scales nothing;
- the timestep is the original's for ``σ``: a fractional index into ``alphas_cumprod``
  (DDPM-style tables), ``1000·t`` (flow matching: the pipeline scales it as it does for its
  own scheduler), or ``0.25·log σ`` (Euler with ``timestep_type="continuous"``: SVD).

A pipeline calls its network once per step for the whole batch: rows of one call with
different conditions are served by different suspended calls, and rows at different ``σ``
share a step with per-row timesteps (:class:`~.probe.RowTimes`, which ``t.expand(n)`` tiles
over the guidance branches) once that is checked to give what serving each level apart gives.
Data rows carry the index of their condition (``cond={"condition": LongTensor}``,
:data:`CONDITION`), so every row is denoised with its own prompt or image, through every
estimator, micro-batch and rank. The scheduler and the suspended calls: :mod:`.probe`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...denoisers import ModelDenoiser
from ...noise import DiscreteVP, Flow, NoiseSchedule
from ...validate import AysError
from .adapter import noise_from_scheduler, prediction_from_scheduler
from .flow import PURE_NOISE_SIGMA
from .probe import ProbeScheduler, Request, RowTimes, Server, Stop, close_all

__all__ = ["CONDITION", "PipelineRoute", "RouteNetwork", "RowTimes", "driving_problem",
           "parametrisation"]

Tensor = torch.Tensor

#: The conditioning key of a route's data rows: the index of the row's condition (prompt or image).
CONDITION = "condition"

#: Parameters a pipeline's ``__call__`` takes for the rows per condition (images, videos).
_PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt")


def parametrisation(scheduler: Any) -> tuple[NoiseSchedule, str, float]:
    """``(noise, prediction, time_scale)`` of the network a diffusers scheduler drives.

    ``time_scale · noise.t(σ)`` is the scheduler's own timestep for ``σ`` (flow matching: ``1000·t``).
    A flow model's top level is pure noise, :data:`~.flow.PURE_NOISE_SIGMA`.
    """
    if hasattr(scheduler, "precondition_inputs"):
        raise AysError(f"{type(scheduler).__name__} preconditions the network itself (EDM); the route drives "
                       "DDPM-style, Euler and flow-matching schedulers")
    noise, prediction = noise_from_scheduler(scheduler), prediction_from_scheduler(scheduler)
    if isinstance(noise, Flow):
        n = float(scheduler.config.get("num_train_timesteps", 1000))
        return Flow(shift=noise.shift, sigma_min=noise.sigma_min, sigma_max=PURE_NOISE_SIGMA), prediction, n
    return noise, prediction, 1.0


def driving_problem(pipe: Any) -> str | None:
    """What ``pipe`` lacks for the route to drive it (None: nothing)."""
    name = type(pipe).__name__
    if getattr(pipe, "scheduler", None) is None or not hasattr(pipe.scheduler, "step"):
        return f"{name} has no scheduler to step: the route needs a pipeline whose loop calls scheduler.step"
    params = inspect.signature(pipe.__call__).parameters
    if "latents" not in params:
        return f"{name}.__call__ takes no latents=: the route needs to hand the pipeline its latents"
    if "prompt" not in params and "image" not in params:
        return f"{name}.__call__ takes neither prompt= nor image=: the route conditions on one of them"
    return None


class PipelineRoute:
    """A loaded pipeline driven through its own ``__call__`` (module docstring).

    ``conditions``: one dict of ``__call__`` keyword arguments per condition (``{"prompt": ...}``,
    ``{"image": ...}``); ``call``: the rest, fixed for every call (size, frames, guidance).
    ``max_batch``: the most rows one network call takes per condition (before guidance doubles it).
    ``seed + c`` seeds the pipeline's own randomness in condition ``c`` (SVD's noise augmentation), as
    :func:`~.routed.route_samples` seeds the model's own sample of that condition.
    """

    def __init__(self, pipe: Any, conditions: Sequence[Mapping[str, Any]], call: Mapping[str, Any] | None = None,
                 *, max_batch: int = 8, seed: int = 0) -> None:
        problem = driving_problem(pipe)
        if problem is not None:
            raise AysError(problem)
        if not conditions:
            raise AysError("the route needs at least one condition (a prompt or an image)")
        self.pipe = pipe
        self.original = pipe.scheduler
        self.noise, self.prediction, self.time_scale = parametrisation(self.original)
        self.conditions = [dict(c) for c in conditions]
        self.call = dict(call or {})
        self.max_batch = int(max_batch)
        self.seed = int(seed)
        self.probe = ProbeScheduler(self.original)
        self.params = inspect.signature(pipe.__call__).parameters
        self.per_prompt = next((p for p in _PER_PROMPT if p in self.params), None)
        dev = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or "cpu"
        self.device = torch.device(dev)
        self.servers: dict[tuple[int, int], Server] = {}
        #: whether rows at different levels may share a step (:class:`RowTimes`); None until first tried
        self.row_times: bool | None = None
        self._finalizer = weakref.finalize(self, close_all, self.servers)
        self.lock = threading.Lock()

    def kwargs(self, condition: int, rows: int) -> dict[str, Any]:
        """``__call__`` keyword arguments of a server: ``rows`` rows of condition ``condition``."""
        cond = dict(self.conditions[condition])
        if self.per_prompt is not None:
            cond[self.per_prompt] = rows
        elif rows > 1:
            cond = {k: [v] * rows if k in ("prompt", "image") else v for k, v in cond.items()}
        out = {**self.call, **cond, "output_type": "latent"}
        if "generator" in self.params:
            # the pipeline's own draws in conditioning (SVD's noise augmentation) as the data's sample c drew them
            out["generator"] = torch.Generator(self.device).manual_seed(self.seed + condition)
        if "num_inference_steps" in self.params:
            out["num_inference_steps"] = 1
        return {k: v for k, v in out.items() if k in self.params}

    def evaluate(self, condition: int, x_model: Tensor, timestep: float | Tensor, sigma: float) -> Tensor:
        """The pipeline's guided network output for the rows ``x_model`` (in its loop's state) of one condition.

        ``timestep``: the level of every row, or (:class:`RowTimes`) one per row.
        """
        if not 0 <= condition < len(self.conditions):
            raise AysError(f"condition index {condition} outside the route's {len(self.conditions)} conditions")
        rows = x_model.shape[0]
        key = (condition, rows)
        with self.lock:
            server = self.servers.get(key)
            if server is None:
                server = self.servers[key] = Server(self.pipe, self.probe, self.device, self.kwargs(condition, rows))
            self.pipe.__dict__["scheduler"] = self.probe
            level = timestep.to(self.device) if isinstance(timestep, Tensor) else float(timestep)
            try:
                return server.evaluate(Request(x_model.to(self.device), level, float(sigma)))
            except (AysError, torch.cuda.OutOfMemoryError):
                del self.servers[key]  # its call has ended; the next request starts a fresh one
                raise
            finally:
                self.pipe.__dict__["scheduler"] = self.original

    def close(self) -> None:
        """End every suspended ``__call__``."""
        with self.lock:
            self.pipe.__dict__["scheduler"] = self.probe
            try:
                close_all(self.servers)
            finally:
                self.pipe.__dict__["scheduler"] = self.original

    def network(self) -> RouteNetwork:
        return RouteNetwork(self)

    def denoiser(self) -> ModelDenoiser:
        """``D(x, σ, condition=...)`` in the EDM convention (rows without a condition: row ``i`` takes ``i mod P``)."""
        return ModelDenoiser(self.network(), self.noise, self.prediction, time_scale=self.time_scale)

    def sched_sigma(self, t: float) -> float:
        """What the original scheduler's ``.sigmas`` hold at model time ``t``: flow time, or σ."""
        if isinstance(self.noise, Flow):
            return t / self.time_scale
        return float(self.noise.sigma(t / self.time_scale))

    # ------------------------------------------------------------------------- the pipeline's own schedule

    def sample(self, condition: int, steps: int) -> Tensor:
        """The pipeline's own ``steps``-step sample of one condition (its scheduler, seed ``seed + c``), loop space."""
        kwargs = {**self.kwargs(condition, 1), "num_inference_steps": int(steps)}
        with torch.no_grad():
            out = self.pipe(**kwargs)
        return out[0].float().cpu()  # the first field: .images or .frames, the loop's latents

    def default_schedule(self, steps: int) -> tuple[Tensor | None, float | None]:
        """``(sigmas, mu)``: the levels the pipeline's own loop visits at ``steps`` steps, as ays sigmas.

        Recorded from the pipeline itself: its ``__call__`` runs with a copy of its scheduler up
        to ``set_timesteps`` (with the pipeline's own arguments: ``sigmas``, ``mu``), and stops there.
        ``(None, None)`` when the schedule does not have ``steps + 1`` levels (multi-stage solvers).
        """
        sched = copy.deepcopy(self.original)
        seen: dict[str, Any] = {}
        inner = sched.set_timesteps

        @functools.wraps(inner)
        def record(*args: Any, **kwargs: Any) -> None:
            inner(*args, **kwargs)
            seen["mu"] = kwargs.get("mu")
            raise Stop

        sched.set_timesteps = record
        kwargs = {**self.kwargs(0, 1), "num_inference_steps": int(steps)}
        self.pipe.__dict__["scheduler"] = sched
        try:
            self.pipe(**kwargs)
        except Stop:
            pass
        finally:
            self.pipe.__dict__["scheduler"] = self.original
        if "mu" not in seen:
            return None, None
        mu = seen["mu"]
        sigmas = getattr(sched, "sigmas", None)
        if sigmas is not None:
            s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
            if isinstance(self.noise, Flow):
                s = torch.where(s >= 1.0, torch.full_like(s, PURE_NOISE_SIGMA), s / (1 - s).clamp_min(1e-300))
        else:
            ts = torch.as_tensor(sched.timesteps, dtype=torch.float64).cpu()
            s = torch.cat([self.noise.sigma(ts), torch.zeros(1, dtype=torch.float64)])
        if s.numel() != steps + 1 or float(s[-1]) != 0.0 or not bool((s[1:] < s[:-1]).all()):
            return None, None if mu is None else float(mu)
        s = s[:-1]
        if isinstance(self.noise, DiscreteVP):  # float32 round-off at the table's top
            s = s.clamp(max=self.noise.sigma_max)
        if float(s[-1]) <= float(self.noise.sigma_min) * (1 + 1e-6):  # no room below (SVD's ends at sigma_min)
            return None, None if mu is None else float(mu)
        last = min(float(self.noise.sigma_min), float(s[-1]) / 2)
        return torch.cat([s, torch.tensor([last], dtype=torch.float64)]), None if mu is None else float(mu)


class RouteNetwork(nn.Module):
    """``f(x_model, t, condition=None)`` for :class:`~ays.denoisers.ModelDenoiser`: rows grouped by condition.

    Each group is served in batches of a power of two rows (at most ``max_batch``), so a server
    (one suspended ``__call__``) serves every batch of its size; rows without a condition take
    condition ``i mod P``. Rows of one batch at different levels share a step with per-row
    timesteps (:class:`RowTimes`) when the pipeline passes them through: checked once, on the
    first such batch, against serving each level apart (the route then keeps to that answer).
    """

    def __init__(self, route: PipelineRoute) -> None:
        super().__init__()
        self.route = route
        # the pipeline's network as a submodule: ays reads the denoiser's device and dtype from its parameters
        nets = [getattr(route.pipe, n, None) for n in ("transformer", "unet")]
        nets += list(getattr(route.pipe, "components", {}).values())
        self.net = next((m for m in nets if isinstance(m, nn.Module) and any(True for _ in m.parameters())), None)

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        route = self.route
        rows = x.shape[0]
        index = cond.pop(CONDITION, None)
        if cond:
            raise AysError(f"the route conditions rows by {CONDITION!r} only, got {sorted(cond)}")
        if index is None:
            index = torch.arange(rows) % len(route.conditions)
        index = torch.as_tensor(index).reshape(-1).long().cpu()
        tt = torch.as_tensor(t).reshape(-1).expand(rows).double().cpu()
        out = torch.empty_like(x)
        groups: dict[tuple[int, float | None], list[int]] = {}
        for i, (c, ti) in enumerate(zip(index.tolist(), tt.tolist())):
            groups.setdefault((c, None if route.row_times is not False else ti), []).append(i)
        for (c, _), members in groups.items():
            start = 0
            while start < len(members):
                size = min(route.max_batch, 2 ** int(math.log2(len(members) - start)))
                idx = torch.tensor(members[start:start + size])
                out[idx.to(x.device)] = self._batch(c, x.index_select(0, idx.to(x.device)), tt[idx]).to(
                    device=x.device, dtype=x.dtype)
                start += size
        return out

    def _batch(self, c: int, x: Tensor, t: Tensor) -> Tensor:
        route = self.route
        levels = t.unique()
        if levels.numel() == 1:
            ti = float(levels[0])
            return route.evaluate(c, x, ti, route.sched_sigma(ti))
        per_row = None
        if route.row_times is not False:
            try:
                per_row = route.evaluate(c, x, t.float().as_subclass(RowTimes), route.sched_sigma(float(t[0])))
            except AysError:
                route.row_times = False
        if route.row_times:
            return per_row
        apart = torch.empty_like(x)
        for level in levels.tolist():
            rows = (t == level).nonzero().reshape(-1).to(x.device)
            apart[rows] = route.evaluate(c, x.index_select(0, rows), level, route.sched_sigma(level)).to(x.dtype)
        if route.row_times is None:
            scale = apart.norm().clamp_min(1e-30)
            route.row_times = per_row is not None and bool((per_row.to(x.dtype) - apart).norm() / scale < 1e-4)
        return apart
