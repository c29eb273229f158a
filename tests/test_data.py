"""Conditioning travels with the data (DESIGN.md): through draws, ays.sample, the KLUB, the optimisers.

The oracle is a class-conditional Gaussian: ``x0 | c ~ N(mu_c, s² I)``. Its exact
conditional denoiser is ``D(x, σ; c) = mu_c + s²/(s² + σ²)·(x − mu_c)``, so with each
row denoised under its own label the KLUB integrand is that of ``N(0, s² I)`` whatever
the means, ``E||D(x_t, t) − D(x_b, b)||² = s⁴·d·(1/(t² + s²) − 1/(b² + s²))``, and the
schedule's KLUB is the closed form :func:`ays.klub.gaussian_klub` with ``c = s``.
Denoised under another row's label, the means no longer cancel and the KLUB grows.
"""

from __future__ import annotations

import pytest
import torch

import ays
from ays import schedules
from ays.data import Conditioned, bind, call, check_cond, draw, repeat, take
from ays.validate import AysError

S = 0.3  # within-class std
D = 4
MEANS = torch.tensor([[-2.0, 0, 1, 0], [2.0, 1, 0, 0], [0.0, -2, 0, 2]], dtype=torch.float64)


def denoiser(x: torch.Tensor, sigma: torch.Tensor, *, label: torch.Tensor) -> torch.Tensor:
    mu = MEANS.to(x.dtype)[label]
    k = (S * S / (S * S + sigma.to(x.dtype) ** 2)).view(-1, *([1] * (x.ndim - 1)))
    return mu + k * (x - mu)


def labelled(n: int, seed: int = 0) -> Conditioned:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, len(MEANS), (n,), generator=g)
    x = MEANS[label] + S * torch.randn(n, D, generator=g, dtype=torch.float64)
    return Conditioned(x, {"label": label})


# ------------------------------------------------------------------ draws and helpers
def test_draw_keeps_each_row_with_its_own_conditioning() -> None:
    data = labelled(50)
    x, cond = draw(data, 137, torch.Generator().manual_seed(1))
    assert x.shape == (137, D) and cond["label"].shape == (137,)
    # every drawn row is a data row, and its label is that row's label
    for xi, li in zip(x, cond["label"]):
        j = int((data.x - xi).abs().sum(1).argmin())
        assert torch.equal(data.x[j], xi) and data.cond["label"][j] == li
    # whole permutations: every row appears floor(137/50) or ceil(137/50) times
    counts = torch.bincount(torch.cdist(x, data.x).argmin(1), minlength=50)
    assert counts.min() >= 2 and counts.max() <= 3


def test_callables_and_pairs_are_data_too() -> None:
    data = labelled(20)
    x, cond = draw((data.x, data.cond), 8, torch.Generator().manual_seed(0))
    assert cond["label"].shape == (8,)
    fn = lambda n, g: labelled(n, seed=int(torch.randint(0, 99, (1,), generator=g)))
    x, cond = draw(fn, 5, torch.Generator().manual_seed(0))
    assert x.shape == (5, D) and set(cond) == {"label"}
    x, cond = draw(data.x, 5, torch.Generator().manual_seed(0))
    assert cond == {}


def test_take_repeat_call_bind() -> None:
    cond = {"label": torch.arange(6), "emb": torch.randn(6, 3)}
    assert torch.equal(take(cond, slice(2, 4))["label"], torch.tensor([2, 3]))
    assert torch.equal(take(cond, torch.tensor([5, 0]))["label"], torch.tensor([5, 0]))
    assert torch.equal(repeat(cond, 2)["label"], torch.cat([torch.arange(6)] * 2))
    x, s = torch.zeros(6, D, dtype=torch.float64), torch.full((6,), 0.5, dtype=torch.float64)
    lab = {"label": cond["label"] % 3}
    assert torch.equal(call(denoiser, x, s, lab), bind(denoiser, lab)(x, s))
    plain = lambda x, s: x
    assert bind(plain, {}) is plain and torch.equal(call(plain, x, s, {}), x)


@pytest.mark.parametrize(
    ("cond", "match"),
    [
        ({"label": torch.arange(3)}, "must have the data's 5 rows"),
        ({"label": [0, 1, 2, 3, 4]}, "must be a tensor"),
        ({"not valid": torch.arange(5)}, "keyword-argument names"),
        ({"emb": torch.full((5, 2), float("nan"))}, "NaN"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_conditioning_is_named(cond, match: str) -> None:
    with pytest.raises(AysError, match=match):
        check_cond(cond, 5)
    if isinstance(cond, dict):
        with pytest.raises(AysError, match=match):
            Conditioned(torch.zeros(5, D), cond)


# ------------------------------------------------------------------ sampling
def test_sample_denoises_each_row_under_its_own_label() -> None:
    # A many-step ODE run of the exact conditional denoiser maps each row into its class:
    # the class means of the outputs are mu_c and their spread is S.
    n = 3000
    label = torch.arange(n) % len(MEANS)
    noise = torch.randn(n, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = schedules.to_sampling(schedules.karras(64, 0.002, 80.0))
    x = ays.sample(denoiser, noise, sig, solver="heun", cond={"label": label})
    for c in range(len(MEANS)):
        rows = x[label == c]
        torch.testing.assert_close(rows.mean(0), MEANS[c], atol=4 * S / rows.shape[0] ** 0.5 + 0.02, rtol=0)
        assert abs(float((rows - MEANS[c]).std()) - S) < 0.03
    with pytest.raises(AysError, match="cond 'label' must have the data's"):
        ays.sample(denoiser, noise, sig, cond={"label": label[:10]})


# ------------------------------------------------------------------ the KLUB
SIGMAS = schedules.karras(6, 0.002, 80.0)


def _klub(data: Conditioned, seed: int = 0) -> tuple[float, float]:
    est = ays.klub(denoiser, data, SIGMAS, samples=4096, generator=torch.Generator().manual_seed(seed))
    return est.total, est.total_stderr


def test_paired_klub_equals_the_closed_form() -> None:
    exact = float(ays.klub.gaussian_klub(SIGMAS, S, D).sum())
    total, se = _klub(labelled(4000))
    assert abs(total - exact) < 4 * se + 1e-3 * exact


def test_pairing_decides_the_klub() -> None:
    data = labelled(4000)
    paired, se = _klub(data)
    # rows and labels permuted together: the same law, the same KLUB within noise
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(7))
    together, se2 = _klub(Conditioned(data.x[perm], {"label": data.cond["label"][perm]}))
    assert abs(together - paired) < 4 * (se * se + se2 * se2) ** 0.5
    # labels shuffled against the rows: each image denoised with another's label
    shuffled, _ = _klub(Conditioned(data.x, {"label": data.cond["label"][perm]}))
    assert shuffled > paired + 20 * se


def test_the_klub_optimum_is_the_class_conditional_one() -> None:
    # The grid minimiser of the paired KLUB is the closed-form optimum of N(0, S²) (the
    # class-conditional law, whatever the means), not the marginal's, which is far wider.
    data = labelled(2000)
    res = ays.optimize(denoiser, data, steps=4, sigma_min=0.002, sigma_max=80.0, seed=0, method="dp", samples=2048,
                       solver="stochastic_ddim")  # the solver the plain KLUB is derived for
    exact = lambda s: float(ays.klub.gaussian_klub(s, S, D).sum())
    best = ays.klub.gaussian_klub_optimal(4, 0.002, 80.0, S)
    assert exact(res.sigmas) <= 1.05 * exact(best)
    assert exact(res.sigmas) < exact(schedules.karras(4, 0.002, 80.0))


FAR = 10.0  # the means ten times farther apart: a row is never near another class's mean


class _Recording:
    """The exact conditional denoiser of the data with means ``FAR·MEANS``, checking each row's label.

    Near the data (σ ≤ 1) a row denoised under its own label lies within a few ``sqrt(S² + σ²)``
    of its class mean; the means are 36 apart, so a row more than 18 from its label's mean is a
    row paired with another row's label (its chance otherwise: P(χ²₄ > 300), nil).
    """

    def __init__(self) -> None:
        self.calls = self.checked = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, label: torch.Tensor) -> torch.Tensor:
        assert label.shape == (x.shape[0],)
        self.calls += 1
        mu = FAR * MEANS.to(x.dtype)[label]
        near = sigma.to(x.dtype).reshape(-1) <= 1.0
        dist = (x - mu).reshape(x.shape[0], -1).norm(dim=1)[near]
        assert torch.all(dist < 18.0), f"a row denoised under another row's label (distance {float(dist.max()):.1f})"
        self.checked += int(near.sum())
        k = (S * S / (S * S + sigma.to(x.dtype) ** 2)).view(-1, *([1] * (x.ndim - 1)))
        return mu + k * (x - mu)


def far_labelled(n: int, seed: int = 0) -> Conditioned:
    data = labelled(n, seed)
    label = data.cond["label"]
    return Conditioned(data.x + (FAR - 1.0) * MEANS[label], {"label": label})


@pytest.mark.parametrize(
    ("method", "options"),
    [("coordinate", {"max_sweeps": 2}), ("dp", {}), ("ays", {}), ("gits", {}), ("ld3", {"epochs": 1}), ("oss", {})],
)
def test_every_method_denoises_each_row_with_its_conditioning(method: str, options: dict) -> None:
    # Every stage (tables, teacher and reference runs, candidates) hands the denoiser each row's own
    # label: the recording denoiser fails on any row near the data paired with another row's label.
    den = _Recording()
    res = ays.optimize(den, far_labelled(500), steps=3, sigma_min=0.002, sigma_max=80.0, seed=0, method=method,
                       samples=256, **options)
    assert den.calls > 0 and den.checked > 0 and res.sigmas.shape == (4,)


def test_the_recording_denoiser_catches_a_row_paired_with_another_rows_label() -> None:
    # The check above can fail: the same table with the labels rolled by one row against the data.
    data = far_labelled(500)
    rolled = Conditioned(data.x, {"label": data.cond["label"].roll(1)})
    with pytest.raises(AssertionError, match="another row's label"):
        ays.optimize(_Recording(), rolled, steps=3, seed=0, method="dp", samples=256)


def test_evaluate_samples_each_noise_row_under_a_data_rows_label() -> None:
    # With each row under its own label, the exact conditional denoiser's many-step samples have
    # the data's law: sliced W2 to fresh data is small (the samples' own noise at 512 rows).
    rows = ays.evaluate(denoiser, labelled(2000), schedules={"karras": "karras"}, solvers=["heun"], steps=[32],
                        seeds=2, samples=512, metrics=["sliced_w2"], sigma_min=0.002, sigma_max=80.0)
    assert rows[0]["sliced_w2"] < 0.3  # measured 0.12; every row under label 0 instead: 1.44


def test_in_batches_calls_the_model_on_at_most_batch_size_rows_and_equals_one_call():
    from ays.data import in_batches

    seen = []

    def den(x, sigma, label):
        seen.append(x.shape[0])
        assert label.shape[0] == x.shape[0] == sigma.shape[0]  # each row keeps its own conditioning
        return x * label[:, None] / (1 + sigma[:, None] ** 2)

    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(37, 3, generator=g), torch.rand(37, generator=g)
    label = torch.arange(37.0)
    whole = den(x, sigma, label)
    seen.clear()
    out = in_batches(den, 8, {"label": label})(x, sigma)
    assert torch.equal(out, whole)
    assert seen == [8, 8, 8, 8, 5]
    assert torch.equal(in_batches(den, None, {"label": label})(x, sigma), whole)
