"""What the flow-matching families (SD3, Flux) share: flow time, the pure-noise level, the time shift.

A flow model is trained on ``x_t = (1 − t)·x0 + t·eps``; in ays' EDM convention that is
``sigma = t/(1 − t)`` (:class:`ays.noise.Flow`). Its pipelines start sampling from pure
noise, ``t = 1``, which is ``sigma = ∞``. ays represents that level by the finite
:data:`PURE_NOISE_SIGMA` ``= 1e8``: its flow time ``1 − 1e-8`` is 1.0 in float32, the
precision the model runs in, so the network sees exactly ``t = 1`` and the state
``x/(1 + sigma)`` is the noise itself; Euler and DPM-Solver steps, written as
``D + (s'/s)(x − D)``, lose nothing at that scale. A schedule for a flow model therefore
starts at ``1e8`` in sigma, and every export in flow time starts at ``t = 1``. Its
smallest level is the model's smallest training time ``t = 1/N`` (``N`` the scheduler's
``num_train_timesteps``).

The scheduler's time shift ``t' = s·t/(1 + (s − 1)·t)`` (SD3: static ``shift``; Flux:
``use_dynamic_shifting`` with ``s = e^mu``, ``mu`` from the image's token count,
:func:`calculate_shift`) is what diffusers applies to its *default* schedule and to
custom ones alike. It shapes the default schedule that the optimiser starts from, it is
recorded in the schedule file, and the diffusers export undoes it
(:func:`ays.integrations.diffusers.to_diffusers` with ``mu``) so that a pipeline run lands
on the optimised levels exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ...noise import Flow, NoiseSchedule
from .family import Family, is_class, lacking

__all__ = ["PURE_NOISE_SIGMA", "FlowFamily", "calculate_shift"]

Tensor = torch.Tensor

#: The EDM noise level that stands for flow time t = 1 (pure noise): 1 − t = 1e-8 rounds to 0 in float32.
PURE_NOISE_SIGMA = 1e8


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's ``mu``: linear in the image's token count from ``base_shift`` to ``max_shift`` (diffusers' formula)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


class FlowFamily(Family):
    """A flow-matching transformer pipeline with a ``FlowMatch*`` scheduler."""

    net_attr = "transformer"
    #: the class name of the pipeline's transformer
    transformer_class = ""
    #: the ``max_shift`` the pipeline passes when the scheduler config has none
    default_max_shift = 1.15

    @classmethod
    def missing(cls, pipe: Any) -> list[str]:
        return lacking(pipe, ("transformer", "scheduler", "text_encoder", "text_encoder_2", "vae"),
                       is_class("transformer", cls.transformer_class),
                       lambda p: None if "FlowMatch" in type(p.scheduler).__name__ else "FlowMatch scheduler")

    def prediction(self) -> str:
        return "flow"

    def noise(self, resolution: tuple[int, int]) -> NoiseSchedule:
        n = int(self.scheduler.config.get("num_train_timesteps", 1000))
        shift = self.shift(resolution) or {}
        return Flow(shift=float(shift.get("shift", 1.0)), sigma_min=1.0 / (n - 1), sigma_max=PURE_NOISE_SIGMA)

    def image_tokens(self, resolution: tuple[int, int]) -> int:
        """The transformer's sequence length for an image of this size (what ``mu`` is computed from)."""
        raise NotImplementedError

    def mu(self, resolution: tuple[int, int]) -> float | None:
        """The pipeline's ``mu`` at this size when the scheduler shifts dynamically, else None."""
        cfg = self.scheduler.config
        if not cfg.get("use_dynamic_shifting", False):
            return None
        return calculate_shift(self.image_tokens(resolution), cfg.get("base_image_seq_len", 256),
                               cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                               cfg.get("max_shift", self.default_max_shift))

    def shift(self, resolution: tuple[int, int]) -> dict[str, Any] | None:
        mu = self.mu(resolution)
        if mu is not None:
            kind = self.scheduler.config.get("time_shift_type", "exponential")
            factor = float(torch.tensor(mu, dtype=torch.float64).exp()) if kind == "exponential" else float(mu)
            return {"kind": "dynamic", "mu": float(mu), "time_shift_type": kind, "shift": factor}
        return {"kind": "static", "shift": float(getattr(self.scheduler, "shift", None)
                                                 or self.scheduler.config.get("shift", 1.0))}

    def default_timesteps_args(self, steps: int) -> dict[str, Any]:
        """What the pipeline passes to ``set_timesteps`` for ``steps`` (besides ``mu``)."""
        return {"num_inference_steps": steps}

    def default_schedule(self, steps: int, resolution: tuple[int, int]) -> Tensor:
        """The pipeline's own default levels for ``steps``, from a copy of its scheduler, as ays sigmas.

        ``t = 1`` becomes :data:`PURE_NOISE_SIGMA`; the final 0 becomes the model's smallest level
        (below the last evaluated one), as an ays schedule ends at ``sigma_min > 0``.
        """
        sched = copy.deepcopy(self.scheduler)
        mu = self.mu(resolution)
        sched.set_timesteps(**self.default_timesteps_args(steps), **({} if mu is None else {"mu": mu}))
        t = torch.as_tensor(sched.sigmas, dtype=torch.float64).cpu()[:-1]
        sigmas = torch.where(t >= 1.0, torch.full_like(t, PURE_NOISE_SIGMA), t / (1 - t).clamp_min(1e-300))
        last = min(float(self.noise(resolution).sigma_min), float(sigmas[-1]) / 2)
        return torch.cat([sigmas, torch.tensor([last], dtype=torch.float64)])

    def info(self, resolution: tuple[int, int], guidance_scale: float, negative_prompt: str | None) -> dict[str, Any]:
        out = super().info(resolution, guidance_scale, negative_prompt)
        out["mu"] = self.mu(resolution)
        out["pure_noise_sigma"] = PURE_NOISE_SIGMA
        return out
