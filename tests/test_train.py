"""Tests of ays.train and ays.nets: the EDM objective, training to the exact denoiser,
save/load, the shipped weights and the ``ays train`` command.

The mathematics checked:

- For Gaussian data ``N(0, c² I_d)`` the ideal denoiser is ``D*(x) = c²/(c²+σ²)·x``
  and the posterior variance is ``E||D*(x_σ) - x0||² = d·c²σ²/(c²+σ²)``. So the EDM
  loss (per dimension) has the irreducible floor
  ``L* = E_σ[λ(σ)·c²σ²/(c²+σ²)]``, ``λ = (σ²+sd²)/(σ·sd)²``, ``ln σ ~ N(-1.2, 1.2²)``,
  computed here by quadrature. The exact denoiser's Monte Carlo loss must match it,
  and a short training run must bring both the loss and the denoiser close to it.
- Shipped weights: the gmm denoisers against the exact mixture denoiser of
  ``ays.problems``; the digits denoiser against the best *linear* (Wiener) denoiser
  built from the training digits' covariance, on held-out test digits.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from scipy import integrate

from ays import nets, problems
from ays import train as T
from ays.denoisers import EDMPrecond, edm_coefficients
from ays.validate import AysError

torch.set_num_threads(1)  # 2 shared cores: keep the tests polite and deterministic


def gaussian_loss_floor(c: float, sd: float, p_mean: float = T.P_MEAN, p_std: float = T.P_STD) -> float:
    """E over ln σ ~ N(p_mean, p_std²) of λ(σ)·c²σ²/(c²+σ²), by adaptive quadrature in u = ln σ."""

    def integrand(u: float) -> float:
        s2 = math.exp(2 * u)
        lam = (s2 + sd**2) / (s2 * sd**2)
        density = math.exp(-0.5 * ((u - p_mean) / p_std) ** 2) / (p_std * math.sqrt(2 * math.pi))
        return density * lam * c * c * s2 / (c * c + s2)

    value, err = integrate.quad(integrand, p_mean - 12 * p_std, p_mean + 12 * p_std, limit=200)
    assert err < 1e-9
    return value


# ------------------------------------------------------------------ the objective
def test_sample_sigma_is_lognormal() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.log(T.sample_sigma(200_000, g)).double()
    # standard errors: 1.2/sqrt(n) = 0.0027 for the mean, ~0.0019 for the std
    assert abs(float(u.mean()) - T.P_MEAN) < 0.012
    assert abs(float(u.std()) - T.P_STD) < 0.01


def test_edm_loss_of_the_exact_gaussian_denoiser_is_the_closed_form_floor() -> None:
    c, sd, d, n = 1.0, 0.5, 2, 400_000
    g = torch.Generator().manual_seed(1)
    x0 = c * torch.randn(n, d, generator=g, dtype=torch.float64)
    sigma = T.sample_sigma(n, g).double()
    noise = torch.randn(n, d, generator=g, dtype=torch.float64)

    def exact(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return c * c / (c * c + s[:, None] ** 2) * x

    per_sample = T.edm_loss(exact, x0, sigma, noise, sd)
    floor = gaussian_loss_floor(c, sd)
    se = float(per_sample.std()) / math.sqrt(n)
    assert abs(float(per_sample.mean()) - floor) < 4 * se, (float(per_sample.mean()), floor, se)
    # ideal_loss does the same for a problem's own exact denoiser
    mean, stderr = T.ideal_loss(problems.gaussian(c, d), sd, samples=100_000, seed=2)
    assert abs(mean - floor) < 4 * stderr and stderr < 0.01 * floor
    # With sd = c the EDM weight exactly cancels the posterior variance: the floor is 1 at every sigma.
    assert gaussian_loss_floor(0.7, 0.7) == pytest.approx(1.0, abs=1e-9)


def test_loss_weight_is_one_over_c_out_squared() -> None:
    sigma = torch.logspace(-3, 2, 11, dtype=torch.float64)
    got = T.edm_loss(lambda x, s: x * 0, torch.ones(11, 1, dtype=torch.float64), sigma,
                     torch.zeros(11, 1, dtype=torch.float64), 0.5)
    # D = 0 and x0 = 1: the per-sample loss is lambda(sigma) itself.
    torch.testing.assert_close(got, 1 / edm_coefficients(sigma, 0.5).c_out ** 2, rtol=1e-12, atol=0)


# ------------------------------------------------------------------ training
C_DATA, SD, DIM = 1.0, 0.5, 2
CHECK_SIGMAS = (0.1, 0.3, 1.0, 3.0)
# Relative L2 error of D against D* = c²/(c²+σ²)·x after training. Measured 0.4-5 % (largest
# at σ = 3, where the loss weight is smallest) for seeds 0-2; the bound leaves room for
# other platforms' round-off.
REL_BOUND = 0.06


def _relative_errors(denoiser: EDMPrecond, c: float) -> list[float]:
    g = torch.Generator().manual_seed(7)
    errs = []
    with torch.no_grad():
        for s in CHECK_SIGMAS:
            x = math.sqrt(c * c + s * s) * torch.randn(20_000, DIM, generator=g)
            exact = c * c / (c * c + s * s) * x
            got = denoiser(x, torch.full((x.shape[0],), s))
            errs.append(float((got - exact).norm() / exact.norm()))
    return errs


@pytest.fixture(scope="module")
def gaussian_run() -> tuple[T.TrainResult, EDMPrecond]:
    data = problems.gaussian(C_DATA, DIM)
    net = nets.build("mlp", dim=DIM, hidden=32, depth=1, seed=0)
    untrained = EDMPrecond(nets.build("mlp", dim=DIM, hidden=32, depth=1, seed=0), SD)
    # sigma_data deliberately != c, so that F must learn a noise-dependent map (with
    # sd = c, c_skip·x is already the exact denoiser and F = 0 would be optimal).
    result = T.train(data, net, steps=1500, batch_size=256, lr=3e-3, seed=0, ema=100, sigma_data=SD)
    return result, untrained


def test_training_reaches_the_exact_gaussian_denoiser(gaussian_run: tuple[T.TrainResult, EDMPrecond]) -> None:
    result, untrained = gaussian_run
    before = _relative_errors(untrained, C_DATA)
    after = _relative_errors(result.denoiser, C_DATA)
    # The untrained net (F = 0: D = c_skip·x) is far off where sigma is not small ...
    assert min(before[1:]) > 3 * REL_BOUND, before
    # ... and training brings D within REL_BOUND of D* at every checked sigma, and closer
    # than it started by a factor of 4 at least.
    assert max(after) < REL_BOUND, after
    assert all(a < b / 4 for a, b in zip(after, before)), (after, before)


def test_trained_loss_approaches_the_irreducible_floor(gaussian_run: tuple[T.TrainResult, EDMPrecond]) -> None:
    result, untrained = gaussian_run
    floor = gaussian_loss_floor(C_DATA, SD)
    n = 200_000
    g = torch.Generator().manual_seed(3)
    x0 = C_DATA * torch.randn(n, DIM, generator=g)
    sigma = T.sample_sigma(n, g)
    noise = torch.randn(n, DIM, generator=g)
    with torch.no_grad():
        trained = T.edm_loss(result.denoiser, x0, sigma, noise, SD)
        exact = T.edm_loss(lambda x, s: C_DATA**2 / (C_DATA**2 + s[:, None] ** 2) * x, x0, sigma, noise, SD)
        start = T.edm_loss(untrained, x0, sigma, noise, SD)
    # Same draws for all three: the excess loss E[lambda·||D - D*||²] is measured without the
    # Monte Carlo noise of the floor itself, and it must be small (1 % of the floor) ...
    excess = float((trained - exact).mean())
    assert -0.002 * floor < excess < 0.01 * floor, (excess, floor)
    # ... where the untrained network's excess is large.
    assert float((start - exact).mean()) > 0.2 * floor
    # The training curve itself ends near the floor (minibatch noise: 3 %).
    assert abs(result.final_loss(300) - floor) < 0.03 * floor, (result.final_loss(300), floor)
    assert result.losses.shape == (1500,)
    assert result.losses[:20].mean() > 1.1 * floor  # and it started well above


def test_training_is_deterministic_and_seeded() -> None:
    data = problems.gaussian(0.5, 2)

    def run(seed: int) -> T.TrainResult:
        net = nets.build("mlp", hidden=16, depth=1, seed=seed)
        return T.train(data, net, steps=30, batch_size=64, seed=seed, ema=5)

    a, b, c = run(0), run(0), run(1)
    torch.testing.assert_close(a.losses, b.losses, rtol=0, atol=0)
    for (k, pa), pb in zip(a.denoiser.state_dict().items(), b.denoiser.state_dict().values()):
        assert torch.equal(pa, pb), k
    assert not torch.equal(a.losses, c.losses)


def test_ema_off_returns_the_final_weights_and_on_averages() -> None:
    data = torch.randn(500, 2)
    net = nets.build("mlp", hidden=16, depth=1)
    plain = T.train(data, net, steps=40, batch_size=32, ema=0)
    for pe, p in zip(plain.denoiser.net.parameters(), plain.net.parameters()):
        assert torch.equal(pe, p)
    net2 = nets.build("mlp", hidden=16, depth=1)
    averaged = T.train(data, net2, steps=40, batch_size=32, ema=10, ema_rampup=None)
    assert any(not torch.equal(pe, p) for pe, p in zip(averaged.denoiser.net.parameters(), averaged.net.parameters()))
    assert not any(p.requires_grad for p in averaged.denoiser.parameters())


def test_callback_and_data_sources() -> None:
    seen: list[dict] = []
    data = torch.randn(100, 2)
    T.train(data, nets.build("mlp", hidden=8, depth=1), steps=25, batch_size=8, log_every=10, callback=seen.append)
    assert [s["step"] for s in seen] == [10, 20, 25]
    assert all(s["steps"] == 25 and math.isfinite(s["loss"]) for s in seen)
    # a callable data source
    T.train(lambda n, g: torch.randn(n, 2, generator=g), nets.build("mlp", hidden=8, depth=1), steps=3, batch_size=4)


def test_sigma_data_is_the_root_mean_square() -> None:
    assert T.sigma_data_of(problems.gaussian(0.7, 3)) == pytest.approx(0.7, rel=1e-12)
    x = torch.tensor([[1.0, -3.0], [1.0, 1.0]])
    assert T.sigma_data_of(x) == pytest.approx(math.sqrt(3.0), rel=1e-7)
    prob = problems.get("gmm-8x8")
    assert T.sigma_data_of(lambda n, g: prob.sample(n, g), samples=200_000) == pytest.approx(
        T.sigma_data_of(prob), rel=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2, "batch_size": 0}, "batch_size"),
        ({"steps": 2, "lr": -1.0}, "lr"),
        ({"steps": 2, "ema": -5.0}, "ema"),
        ({"steps": 2, "sigma_data": 0.0}, "sigma_data"),
    ],
)
def test_train_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(AysError, match=message):
        T.train(torch.randn(10, 2), nets.build("mlp", hidden=8, depth=1), **kwargs)


def test_train_rejects_bad_data_and_divergence() -> None:
    net = nets.build("mlp", hidden=8, depth=1)
    with pytest.raises(AysError, match="NaN"):
        T.train(torch.tensor([[0.0, math.nan]]), net, steps=1)
    with pytest.raises(AysError, match="problem"):
        T.train(42, net, steps=1)
    with pytest.raises(AysError, match="diverged"):
        T.train(torch.full((4, 2), 1e30), net, steps=3, sigma_data=1.0)


# ------------------------------------------------------------------ networks
def test_networks_shapes_dtypes_and_checks() -> None:
    mlp = nets.build("mlp", dim=2, hidden=16, depth=2)
    conv = nets.build("conv", width=8)
    c = torch.zeros(5)
    assert mlp(torch.randn(5, 2), c).shape == (5, 2)
    out = conv(torch.randn(5, 1, 8, 8, dtype=torch.float64), c)
    assert out.shape == (5, 1, 8, 8) and out.dtype == torch.float64  # runs in float32, answers in x's dtype
    with pytest.raises(AysError, match="features"):
        mlp(torch.randn(5, 3), c)
    with pytest.raises(AysError, match="ConvNet"):
        conv(torch.randn(5, 1, 7, 7), c)
    with pytest.raises(AysError, match="unknown network"):
        nets.build("transformer")
    with pytest.raises(AysError, match="bad arguments"):
        nets.build("mlp", nonsense=3)
    # small enough for a laptop CPU (and for files well under 1 MB)
    assert nets.num_parameters(nets.build("mlp")) < 200_000
    assert nets.num_parameters(nets.build("conv")) < 200_000


def test_build_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = nets.build("conv", width=8, seed=4)
    b = nets.build("conv", width=8, seed=4)
    c = nets.build("conv", width=8, seed=5)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    rebuilt = nets.build(**nets.config_of(a), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), rebuilt.parameters()))


def test_sinusoidal_embedding_is_injective_and_bounded() -> None:
    emb = nets.SinusoidalEmbedding(33)
    c = torch.linspace(-2, 2, 401)
    e = emb(c)
    assert e.shape == (401, 33)
    assert torch.equal(e[:, 0], c.double())
    assert float(e[:, 1:].abs().max()) <= 1.0
    # distinct noise levels never share an embedding
    assert float(torch.pdist(e).min()) > 1e-3


# ------------------------------------------------------------------ save / load
@pytest.mark.parametrize(("name", "shape"), [("mlp", (2,)), ("conv", (1, 8, 8))])
def test_save_load_round_trip_is_exact(tmp_path, name: str, shape: tuple[int, ...]) -> None:
    kwargs = {"hidden": 16, "depth": 1} if name == "mlp" else {"width": 8}
    net = nets.build(name, seed=3, **kwargs)
    with torch.no_grad():  # non-zero output layer, so the comparison is not trivially D = c_skip·x
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model = EDMPrecond(net, 0.6).eval()
    path = tmp_path / "sub" / "model.pt"
    T.save_model(path, model, {"problem": "x", "note": (1, 2)})
    assert [f for f in os.listdir(path.parent) if f != "model.pt"] == []  # no temp file left behind
    loaded = T.load_model(path)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.logspace(-2, 1, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma), model(x, sigma))
    assert loaded.sigma_data == 0.6
    info = T.model_info(path)
    assert info["net"] == nets.config_of(net) and info["config"]["note"] == [1, 2]
    # a raw network needs sigma_data in the config
    with pytest.raises(AysError, match="sigma_data"):
        T.save_model(tmp_path / "raw.pt", net, {})
    T.save_model(tmp_path / "raw.pt", net, {"sigma_data": 0.6})
    with torch.no_grad():
        assert torch.equal(T.load_model(tmp_path / "raw.pt")(x, sigma), model(x, sigma))


def test_load_rejects_corrupt_and_foreign_files(tmp_path) -> None:
    good = tmp_path / "good.pt"
    T.save_model(good, EDMPrecond(nets.build("mlp", hidden=8, depth=1), 0.5))
    raw = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a model" * 20)
    (tmp_path / "schedule.json").write_text('{"format": "ays-schedule/1", "sigmas": [1, 0.5]}')
    torch.save({"state_dict": {}, "format": "something-else"}, tmp_path / "foreign.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for bad in ("truncated.pt", "garbage.pt", "schedule.json"):
        with pytest.raises(AysError, match="not a readable ays model file"):
            T.load_model(tmp_path / bad)
    for bad in ("foreign.pt", "tensor.pt"):
        with pytest.raises(AysError, match="not an ays model file"):
            T.load_model(tmp_path / bad)
    # well-formed, but the weights do not fit the network it names
    payload = torch.load(good, weights_only=True)
    payload["net"]["hidden"] = 9
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(AysError, match="do not fit"):
        T.load_model(tmp_path / "mismatch.pt")
    with pytest.raises(FileNotFoundError):
        T.load_model(tmp_path / "missing.pt")


def test_plot_loss_writes_a_png(tmp_path) -> None:
    path = T.plot_loss(torch.rand(500) + 0.5, tmp_path / "loss.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(AysError):
        T.plot_loss([], tmp_path / "empty.png")


# ------------------------------------------------------------------ shipped weights
# Stated quality of the shipped models (BENCHMARKS.md, section 9): root mean squared error
# sqrt(E||D(x) - D*(x)||²) against the exact mixture denoiser, x = x0 + σ·z.
GMM_BOUNDS = {0.5: 0.02, 2.0: 0.03}


def test_pretrained_names_and_unknown_name() -> None:
    assert {"gmm-8x8", "digits"} <= set(T.pretrained_names())
    with pytest.raises(AysError, match=r"available: .*gmm-8x8"):
        T.pretrained("imagenet")


@pytest.mark.parametrize("name", ["gmm-8x8", "gmm-8x4", "gmm-6x6"])
def test_pretrained_gmm_matches_the_exact_denoiser(name: str) -> None:
    if name not in T.pretrained_names():
        pytest.fail(f"shipped weights for {name} are missing")
    model = T.pretrained(name)
    prob = problems.get(name)
    g = torch.Generator().manual_seed(11)
    for sigma, bound in GMM_BOUNDS.items():
        x = prob.sample(20_000, g) + sigma * torch.randn(20_000, 2, generator=g)
        s = torch.full((x.shape[0],), sigma)
        with torch.no_grad():
            err = (model(x, s) - prob.denoiser(x, s)).square().sum(1).mean().sqrt()
        # for scale: the error of the trivial D = x is sigma·sqrt(2) minus what D* removes
        trivial = (x - prob.denoiser(x, s)).square().sum(1).mean().sqrt()
        assert float(err) < bound, (name, sigma, float(err))
        assert float(err) < 0.1 * float(trivial)


def test_pretrained_digits_beats_the_best_linear_denoiser_on_test_digits() -> None:
    model = T.pretrained("digits")
    train, test = problems.digits_data("train"), problems.digits_data("test")
    sigma = 0.5
    g = torch.Generator().manual_seed(5)
    x = test + sigma * torch.randn(test.shape, generator=g)
    with torch.no_grad():
        mse = float((model(x, torch.full((x.shape[0],), sigma)) - test).square().mean())
    # Wiener filter from the training digits: the best denoiser that is affine in x.
    m = train.reshape(len(train), -1).double().mean(0)
    xc = train.reshape(len(train), -1).double() - m
    cov = xc.T @ xc / len(train)
    w = cov @ torch.linalg.inv(cov + sigma**2 * torch.eye(64, dtype=torch.float64))
    wiener = m + (x.reshape(len(x), -1).double() - m) @ w.T
    mse_wiener = float((wiener - test.reshape(len(test), -1).double()).square().mean())
    mse_identity = sigma**2
    mse_mean = float((m - test.reshape(len(test), -1).double()).square().mean())
    assert mse < 0.8 * mse_wiener, (mse, mse_wiener)
    assert mse_wiener < min(mse_identity, mse_mean)  # the baseline is itself not trivial


# ------------------------------------------------------------------ command line
def test_cli_trains_saves_and_plots(tmp_path, capsys) -> None:
    from ays.cli import main

    out, plot = tmp_path / "m.pt", tmp_path / "loss.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "gaussian", "--steps", "30", "--batch-size", "16", "-N", "hidden=8", "-N", "depth=1",
              "--out", str(out), "--plot", str(plot)])
    assert exit_info.value.code == 0
    assert "saved" in capsys.readouterr().out
    info = T.model_info(out)
    assert info["config"]["command"].startswith("ays train gaussian --steps 30 --batch-size 16")
    assert info["net"]["hidden"] == 8
    assert T.load_model(out)(torch.zeros(2, 2), torch.ones(2)).shape == (2, 2)
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args",
    [
        ["train", "nope", "--out", "x.pt"],
        ["train", "gaussian", "--steps", "0", "--out", "x.pt"],
        ["train", "gaussian", "--steps", "5", "-N", "hidden", "--out", "x.pt"],
        ["train", "gaussian", "--steps", "5", "--threads", "0", "--out", "x.pt"],
        ["train", "gaussian", "--steps", "5"],
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, args: list[str]) -> None:
    from ays.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ays: error:") and "\n" not in err
    assert not (tmp_path / "x.pt").exists()
