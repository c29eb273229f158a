"""The moving-digits video problem: construction, motion, determinism, exact denoiser."""

from __future__ import annotations

import pytest
import torch

import ays
from ays.problems import digits_data, video
from ays.validate import AysError


@pytest.fixture(scope="module")
def clips_info() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return video.make_clips()


def test_shapes_and_range(clips_info: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
    clips, info = clips_info
    n = video.DEFAULT_CLIPS
    assert clips.shape == (n, video.FRAMES, video.SIZE, video.SIZE)
    assert clips.dtype == torch.float64
    assert 1 <= n <= 1500
    assert clips.min() >= -1.0 and clips.max() <= 1.0
    assert info["velocity"].shape == (n, 2) and info["start"].shape == (n, 2)
    prob = ays.problems.get("digits-video")
    assert prob.shape == (video.FRAMES, video.SIZE, video.SIZE)
    assert prob.n_components == n and prob.has_atoms
    assert torch.equal(prob.means.reshape(clips.shape), clips)
    assert "digits-video" in ays.problems.names()


def test_every_frame_is_the_digit_at_its_place(clips_info: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
    clips, info = clips_info
    digits = digits_data("train", dtype=torch.float64)[:, 0]
    vel, start = info["velocity"], info["start"]
    assert bool((vel.abs().max(dim=1).values >= 1).all()), "every clip moves"
    assert int(vel.abs().max()) <= video.MAX_SPEED
    # Velocities are spread over the allowed set, not stuck on one value.
    assert len({tuple(v) for v in vel.tolist()}) == (2 * video.MAX_SPEED + 1) ** 2 - 1
    for i in range(0, clips.shape[0], 37):
        for t in range(video.FRAMES):
            r, c = (start[i] + t * vel[i]).tolist()
            assert 0 <= r <= video.SIZE - 8 and 0 <= c <= video.SIZE - 8
            frame = clips[i, t]
            assert torch.equal(frame[r : r + 8, c : c + 8], digits[info["digit"][i]])
            outside = frame.clone()
            outside[r : r + 8, c : c + 8] = 0.0
            assert bool(((outside == -1.0) | (outside == 0.0)).all())
            assert float((frame == -1.0).sum()) >= video.SIZE**2 - 64


def test_motion_is_one_translation_for_the_whole_clip(clips_info: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
    clips, info = clips_info
    for i in range(0, clips.shape[0], 11):
        vr, vc = info["velocity"][i].tolist()
        for t in range(video.FRAMES - 1):
            assert torch.equal(video.shift(clips[i, t], vr, vc), clips[i, t + 1])
        # The velocity is identifiable: no other shift maps frame 0 onto frame 1.
        others = [
            (a, b) for a in range(-2, 3) for b in range(-2, 3)
            if (a, b) != (vr, vc) and torch.equal(video.shift(clips[i, 0], a, b), clips[i, 1])
        ]
        assert others == []
    assert video.motion_error(clips) == 0.0


def test_motion_error_sees_broken_motion(clips_info: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
    clips = clips_info[0][:200]
    # Reversed time is again rigid motion (velocity -v): still 0.
    assert video.motion_error(clips.flip(1)) == 0.0
    # Swapping the middle frames breaks constant velocity.
    assert video.motion_error(clips[:, [0, 2, 1, 3]]) > 1e-3
    # Noise of std s on every frame costs about 2 s² per pixel (two independent frames).
    g = torch.Generator().manual_seed(0)
    noisy = clips + 0.1 * torch.randn(clips.shape, generator=g, dtype=torch.float64)
    assert video.motion_error(noisy) == pytest.approx(2 * 0.01, rel=0.1)
    # Mixing two clips frame by frame (a cross-fade) is not one translation either.
    assert video.motion_error(0.5 * (clips[:100] + clips[100:])) > 1e-3


def test_shift_is_a_translation_with_background_fill() -> None:
    img = torch.arange(16.0).reshape(4, 4)
    out = video.shift(img, 1, -2)
    assert torch.equal(out[1:, :2], img[:3, 2:])
    assert bool((out[0] == -1).all()) and bool((out[:, 2:] == -1).all())
    assert torch.equal(video.shift(img, 0, 0), img)
    assert bool((video.shift(img, 5, 0) == -1).all())


def test_deterministic_and_seeded() -> None:
    a, ia = video.make_clips(64)
    b, ib = video.make_clips(64)
    assert torch.equal(a, b) and all(torch.equal(ia[k], ib[k]) for k in ia)
    c, _ = video.make_clips(64, seed=1)
    assert not torch.equal(a, c)
    # The first clips do not depend on how many are made.
    big, _ = video.make_clips(128)
    assert torch.equal(big[:64], a)


def test_exact_denoiser_returns_the_nearest_clip_at_small_sigma() -> None:
    prob = ays.problems.get("digits-video")
    clips = prob.means.reshape(-1, *prob.shape)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(clips.shape[0], (64,), generator=g)
    sigma = 0.05
    x = clips[idx] + sigma * torch.randn(64, *prob.shape, generator=g, dtype=torch.float64)
    d = prob.denoiser(x, torch.full((64,), sigma, dtype=torch.float64))
    # Brute-force nearest clip: the posterior mean at small sigma is that clip.
    nearest = torch.cdist(x.reshape(64, -1), prob.means).argmin(dim=1)
    assert torch.equal(nearest, idx)
    torch.testing.assert_close(d, clips[nearest], atol=1e-9, rtol=0)
    # At large sigma the posterior mean is the average clip.
    far = prob.denoiser(x * 0 + 1e4, torch.full((64,), 1e4, dtype=torch.float64))
    torch.testing.assert_close(far[0], clips.mean(dim=0), atol=1e-3, rtol=0)


def test_bad_arguments() -> None:
    with pytest.raises(AysError, match="n_clips"):
        video.make_clips(5000)
    with pytest.raises(AysError, match="leaves"):
        video.make_clips(8, max_speed=3)
    with pytest.raises(AysError, match="clips"):
        video.motion_error(torch.zeros(3, 16, 16))
    with pytest.raises(AysError, match="NaN"):
        video.motion_error(torch.full((2, 4, 16, 16), float("nan")))
