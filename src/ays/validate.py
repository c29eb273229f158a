"""The one place that checks what users hand to ays.

Every schedule, step count, noise range, name and tensor shape that enters the
library passes through a function here, so that a bad value is refused with a
message naming the fault before it can turn into a silent NaN deep inside a
solver or an optimiser. Errors derive from :class:`AysError` (itself a
``ValueError``), which the command line turns into exit code 2 and one line.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "AysError",
    "ScheduleError",
    "check_batch",
    "check_budget",
    "check_choice",
    "check_finite",
    "check_positive",
    "check_range",
    "check_sigmas",
    "check_steps",
]


class AysError(ValueError):
    """A user-facing error: bad input, a bad file, a model that misbehaves."""


class ScheduleError(AysError):
    """A schedule (sequence of noise levels) that cannot be used."""


def check_steps(steps: Any, *, name: str = "steps", minimum: int = 1) -> int:
    """Return ``steps`` as an int, or raise if it is not an integer >= ``minimum``."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise AysError(f"{name} must be an integer, got {steps!r}")
    steps = int(steps)
    if steps < minimum:
        raise AysError(f"{name} must be at least {minimum}, got {steps}")
    return steps


_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def check_budget(value: Any, *, name: str = "budget") -> int:
    """A count of denoiser calls: an integer, or a string with a suffix (``"50k"``, ``"1.5M"``, ``"2_000"``)."""
    if isinstance(value, str):
        text = value.strip().replace("_", "").replace(",", "").lower()
        unit = text[-1:] if text[-1:] in _SUFFIX and text[-1:] else ""
        try:
            number = float(text[: len(text) - len(unit)])
        except ValueError:
            raise AysError(f"{name} must be a number of denoiser calls such as 50000 or 50k, got {value!r}") from None
        if not math.isfinite(number) or number != number:
            raise AysError(f"{name} must be finite, got {value!r}")
        value = round(number * _SUFFIX[unit])
    return check_steps(value, name=name)


def check_positive(value: Any, *, name: str, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (or >= 0), or raise naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AysError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise AysError(f"{name} must be finite, got {v}")
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise AysError(f"{name} must be {bound}, got {v}")
    return v


def check_range(sigma_min: Any, sigma_max: Any) -> tuple[float, float]:
    """Check a noise range ``0 < sigma_min < sigma_max < inf``."""
    lo = check_positive(sigma_min, name="sigma_min")
    hi = check_positive(sigma_max, name="sigma_max")
    if lo >= hi:
        raise AysError(f"sigma_min must be below sigma_max, got sigma_min={lo} >= sigma_max={hi}")
    return lo, hi


def check_choice(value: str, choices: Iterable[str], *, what: str) -> str:
    """Check that ``value`` is one of ``choices``; the error lists them."""
    options = sorted(choices)
    if value not in options:
        raise AysError(f"unknown {what} {value!r}; choose one of: {', '.join(options)}")
    return value


def _as_float64(sigmas: Any, name: str) -> torch.Tensor:
    if isinstance(sigmas, torch.Tensor):
        t = sigmas.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise ScheduleError(f"{name} must be a sequence of numbers, got {sigmas!r}") from None
    if t.ndim != 1:
        raise ScheduleError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def check_sigmas(
    sigmas: Sequence[float] | torch.Tensor,
    *,
    steps: int | None = None,
    allow_final_zero: bool = True,
    name: str = "sigmas",
) -> torch.Tensor:
    """Validate a schedule and return it as a 1-D float64 CPU tensor.

    A schedule of n steps holds n+1 noise levels, strictly decreasing, finite and
    positive; with ``allow_final_zero`` the last one may be 0 (the sampling
    convention of k-diffusion, ComfyUI and diffusers).
    """
    t = _as_float64(sigmas, name)
    if t.numel() < 2:
        raise ScheduleError(f"{name} needs at least 2 noise levels (1 step), got {t.numel()}")
    if steps is not None and t.numel() != steps + 1:
        raise ScheduleError(
            f"{name} has {t.numel()} noise levels but {steps} steps need {steps + 1}"
        )
    bad = ~torch.isfinite(t)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ScheduleError(f"{name}[{i}] is not finite ({t[i].item()})")
    body = t[:-1] if allow_final_zero and t[-1] == 0 else t
    nonpos = body <= 0
    if nonpos.any():
        i = int(nonpos.nonzero()[0])
        where = "before the final level" if allow_final_zero else ""
        raise ScheduleError(f"{name}[{i}] = {t[i].item()} must be > 0 {where}".rstrip())
    diffs = t[1:] - t[:-1]
    up = diffs >= 0
    if up.any():
        i = int(up.nonzero()[0])
        raise ScheduleError(
            f"{name} must be strictly decreasing: {name}[{i}] = {t[i].item()} "
            f"<= {name}[{i + 1}] = {t[i + 1].item()}"
        )
    return t


def check_finite(x: torch.Tensor, *, what: str) -> torch.Tensor:
    """Raise if ``x`` holds NaN or inf; ``what`` says where it came from."""
    if not torch.isfinite(x).all():
        raise AysError(f"{what} returned NaN or inf")
    return x


def check_batch(x: Any, *, name: str = "x", min_ndim: int = 1) -> torch.Tensor:
    """Check that ``x`` is a floating tensor with a leading batch dimension."""
    if not isinstance(x, torch.Tensor):
        raise AysError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < min_ndim:
        raise AysError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise AysError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] == 0:
        raise AysError(f"{name} is empty (batch size 0)")
    return x
