"""The defaults every subcommand shares, in one place (written down in docs/cli.md, "Defaults").

The solver and the method are the library's own (:data:`ays.optimize.DEFAULT_SOLVER`,
:data:`ays.optimize.DEFAULT_METHOD`), so ``ays.optimize(...)`` and ``ays optimize``
agree; the KLUB chains are ``ays.optimize``'s ``samples`` default (None: the method's, from the budget),
and ``ays plot --klub`` takes the paper's 8,192. A command's noise
range is, in this order: the ``--sigma-min``/``--sigma-max`` flags, the problem's or
model's own range, else EDM's 0.002-80 with a one-line note on stderr.
"""

from __future__ import annotations

import inspect
from typing import Any

import click

from ..optimize import optimize
from ..optimize.task import DEFAULT_METHOD, DEFAULT_SOLVER
from ..validate import AysError, check_positive

__all__ = ["DEFAULT_METHOD", "DEFAULT_SOLVER", "EDM_RANGE", "EVAL_SAMPLES", "KLUB_NOTE", "KLUB_SAMPLES", "SAMPLES",
           "klub_chains", "model_range", "noise_range", "range_note"]

#: EDM's noise range (Karras et al. 2022), ``ays.optimize``'s when the model has none of its own.
EDM_RANGE = (0.002, 80.0)

#: Monte Carlo chains per KLUB estimate of an optimisation: ``ays.optimize``'s own default (None: the
#: method's, the paper's 8,192, or for method "ays" as many as ``--budget`` pays for).
SAMPLES: int | None = inspect.signature(optimize).parameters["samples"].default

#: Monte Carlo chains per KLUB estimate where a number is needed (`ays plot --klub`): the paper's 8,192.
KLUB_SAMPLES = 8192

#: Samples per schedule, solver, step count and seed when schedules are compared (`ays evaluate`, `ays demo`).
EVAL_SAMPLES = 4096

#: What a printed KLUB is, in one line (it is a diagnostic, not what the default method minimises).
KLUB_NOTE = ("KLUB: the paper's upper bound on the KL divergence of stochastic DDIM's sampling path, "
             "estimated as in its Alg. 2 (proposal c = 0.5) on fresh chains: `ays optimize` and `ays plot --klub` "
             "estimate the same number, each ± its standard error over its chains; its minimiser over-aligns, "
             "so a lower KLUB does not mean better samples")


def klub_chains(result: Any) -> int | None:
    """The fresh chains behind a result's reported KLUB: the method's ``final_samples``, else its ``samples``."""
    settings = getattr(result, "settings", None) or {}
    options = settings.get("options") or {}
    chains = options.get("final_samples", settings.get("samples"))
    return int(chains) if isinstance(chains, int) and not isinstance(chains, bool) else None


def noise_range(sigma_min: float | None, sigma_max: float | None, own: tuple[float | None, float | None] = (None, None),
                *, note: bool = True) -> tuple[float, float]:
    """The range a command uses: the flags, else ``own`` (the problem's or model's), else :data:`EDM_RANGE`.

    Falling back on EDM's range prints one note on stderr (unless ``note`` is False: then
    :func:`range_note` prints it once the work succeeds); a bad range is an
    :class:`AysError` that names the flags.
    """
    lo = sigma_min if sigma_min is not None else own[0]
    hi = sigma_max if sigma_max is not None else own[1]
    lo = EDM_RANGE[0] if lo is None else lo
    hi = EDM_RANGE[1] if hi is None else hi
    lo = check_positive(lo, name="--sigma-min")
    hi = check_positive(hi, name="--sigma-max")
    if lo >= hi:
        raise AysError(f"--sigma-min must be below --sigma-max, got {lo:g} >= {hi:g}")
    if note:
        range_note(sigma_min, sigma_max, own)
    return lo, hi


def range_note(sigma_min: float | None, sigma_max: float | None,
               own: tuple[float | None, float | None] = (None, None)) -> None:
    """The one-line note of :func:`noise_range` when an end falls back on EDM's range, else nothing."""
    missing = [flag for flag, given, known in (("--sigma-min", sigma_min, own[0]), ("--sigma-max", sigma_max, own[1]))
               if given is None and known is None]
    if missing:
        lo = EDM_RANGE[0] if "--sigma-min" in missing else None
        hi = EDM_RANGE[1] if "--sigma-max" in missing else None
        used = " and ".join(f"{flag} {v:g}" for flag, v in (("--sigma-min", lo), ("--sigma-max", hi)) if v is not None)
        click.echo(f"ays: note: no {' or '.join(missing)} given and the model has none; using EDM's {used}", err=True)


def model_range(job: Any) -> tuple[float | None, float | None]:
    """A job's own range: the problem's or entry point's, else its discrete-time model's (as in ``ays.optimize``)."""
    from ..noise import DiscreteVP

    lo, hi = job.sigma_min, job.sigma_max
    if isinstance(job.noise, DiscreteVP):
        lo = job.noise.sigma_min if lo is None else lo
        hi = job.noise.sigma_max if hi is None else hi
    return lo, hi
