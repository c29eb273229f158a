"""ays.sample: the checked entry point (validation, noise scaling, finite output)."""

from __future__ import annotations

import importlib

import pytest
import torch

import ays
from ays import analysis, schedules, solvers
from ays.validate import AysError, ScheduleError

SIGMAS = schedules.to_sampling(schedules.karras(6, 0.02, 20.0))


def den(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) / (1.0 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", solvers.names())
def test_sample_scales_the_noise_and_runs_the_solver(name):
    z = noise(3, 2, 4)
    out = ays.sample(den, z, SIGMAS, solver=name, generator=torch.Generator().manual_seed(1))
    ref = solvers.get(name)(den, z * 20.0, SIGMAS, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, ref)
    assert out.shape == z.shape and out.dtype == z.dtype


def test_default_solver_is_dpmpp_2m_and_options_pass_through():
    z = noise(4, 3)
    assert torch.equal(ays.sample(den, z, SIGMAS), solvers.dpmpp_2m(den, z * 20.0, SIGMAS))
    a = ays.sample(den, z, SIGMAS, solver="euler_ancestral", generator=torch.Generator().manual_seed(0), eta=0.0)
    assert torch.equal(a, solvers.euler(den, z * 20.0, SIGMAS))


def test_sample_draws_gaussian_data_with_the_right_variance():
    z = noise(100_000, 1, seed=3).double()
    out = ays.sample(analysis.gaussian_denoiser(0.5), z, SIGMAS, solver="heun")
    assert float(out.var()) == pytest.approx(analysis.output_variance("heun", SIGMAS, 0.5), rel=0.02)


def test_callback_and_noise_sampler_are_forwarded():
    seen = []
    zero = lambda s, t: torch.zeros(2, 3)
    z = noise(2, 3)
    a = ays.sample(den, z, SIGMAS, solver="dpmpp_2m_sde", callback=seen.append, noise_sampler=zero)
    assert torch.equal(a, solvers.dpmpp_2m_sde(den, z * 20.0, SIGMAS, noise_sampler=zero))
    assert not torch.allclose(a, ays.sample(den, z, SIGMAS, solver="dpmpp_2m_sde",
                                            generator=torch.Generator().manual_seed(0)))
    assert [e["i"] for e in seen] == list(range(6))
    assert float(seen[0]["sigma"]) == pytest.approx(20.0)


def test_bad_schedules_are_refused():
    with pytest.raises(ScheduleError):
        ays.sample(den, noise(2, 2), [1.0, 2.0, 0.0])
    with pytest.raises(ScheduleError):
        ays.sample(den, noise(2, 2), [1.0])
    with pytest.raises(ScheduleError):
        ays.sample(den, noise(2, 2), [2.0, float("nan"), 0.0])


def test_bad_noise_is_refused():
    with pytest.raises(AysError, match=r"noise must be a torch\.Tensor"):
        ays.sample(den, [[0.0]], SIGMAS)
    with pytest.raises(AysError, match="batch size 0"):
        ays.sample(den, torch.zeros(0, 3), SIGMAS)
    with pytest.raises(AysError, match="floating"):
        ays.sample(den, torch.zeros(2, 3, dtype=torch.int64), SIGMAS)
    with pytest.raises(AysError, match="NaN"):
        ays.sample(den, torch.full((2, 3), float("inf")), SIGMAS)


def test_unknown_solver_and_option_are_named():
    with pytest.raises(AysError, match=r"unknown solver 'lms'.*dpmpp_2m"):
        ays.sample(den, noise(2, 2), SIGMAS, solver="lms")
    with pytest.raises(AysError, match=r"solver 'heun' has no option.*'S_churn'"):
        ays.sample(den, noise(2, 2), SIGMAS, solver="heun", S_churn=10.0)
    with pytest.raises(AysError, match="solver must be a name"):
        ays.sample(den, noise(2, 2), SIGMAS, solver=solvers.euler)


def test_non_finite_output_names_the_solver():
    def broken(x, sigma):
        return x * float("nan")

    with pytest.raises(AysError, match="solver 'euler' returned NaN or inf"):
        ays.sample(broken, noise(2, 2), SIGMAS, solver="euler")


def test_ays_sample_stays_callable_after_importing_the_module():
    """`import ays.sample` binds the module to ays.sample; it must still sample."""
    module = importlib.import_module("ays.sample")
    z = noise(2, 3)
    expected = module.sample(den, z, SIGMAS)
    assert torch.equal(ays.sample(den, z, SIGMAS), expected)
    assert torch.equal(module(den, z, SIGMAS), expected)
