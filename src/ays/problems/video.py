"""A video-shaped problem: short clips of handwritten digits moving at constant velocity.

Each clip is ``frames`` frames of a ``size × size`` canvas (background -1, the digits'
scale of :func:`ays.problems.digits_data`) in which one 8×8 training digit translates
by a fixed integer velocity ``v = (v_row, v_col)``, ``|v_row|, |v_col| <= max_speed``,
``v != 0``, starting where the whole path stays on the canvas:

    frame_t = place(digit, p0 + t·v),      t = 0, ..., frames - 1.

Clip ``i`` uses training digit ``i`` (a fixed permutation of the digits) and a velocity
and start drawn from a generator seeded by ``seed``, so the set is the same on every
run and machine. The problem ``digits-video`` (:func:`digits_video`) is the empirical
distribution of these clips, so its denoiser is exact (the posterior mean over the
clips; the nearest clip at small sigma) and sample quality can be judged against the
truth. Shape ``(frames, size, size)`` = ``(4, 16, 16)``: frames are channels, so a 2-D
conv net can model it.

:func:`motion_error` measures temporal coherence: how far consecutive frames are from
one rigid translation of one another with one velocity for the whole clip (0 for every
training clip). A sampler that blurs frames or mixes clips scores above 0.
"""

from __future__ import annotations

import functools

import torch

from ..validate import AysError, check_batch, check_steps
from .digits import digits_data
from .mixture import GaussianMixture, empirical

__all__ = ["DEFAULT_CLIPS", "FRAMES", "MAX_SPEED", "SIZE", "digits_video", "make_clips", "motion_error", "shift"]

Tensor = torch.Tensor

#: Clips in the ``digits-video`` problem (<= the 1,437 training digits; the exact denoiser stays fast).
DEFAULT_CLIPS = 1024
FRAMES = 4
SIZE = 16
MAX_SPEED = 2
_DIGIT = 8  # side of a digit image
_BACKGROUND = -1.0
_MOTION_CHUNK = 1024  # clips per vectorised block of motion_error


def shift(frames: Tensor, v_row: int, v_col: int, fill: float = _BACKGROUND) -> Tensor:
    """Translate images ``[..., H, W]`` by integer ``(v_row, v_col)`` pixels, filling with ``fill``.

    ``out[..., r + v_row, c + v_col] = frames[..., r, c]``; what leaves the canvas is lost.
    """
    h, w = frames.shape[-2], frames.shape[-1]
    out = torch.full_like(frames, fill)
    if abs(v_row) >= h or abs(v_col) >= w:
        return out
    src_r = slice(max(0, -v_row), h - max(0, v_row))
    dst_r = slice(max(0, v_row), h - max(0, -v_row))
    src_c = slice(max(0, -v_col), w - max(0, v_col))
    dst_c = slice(max(0, v_col), w - max(0, -v_col))
    out[..., dst_r, dst_c] = frames[..., src_r, src_c]
    return out


def _velocities(max_speed: int) -> list[tuple[int, int]]:
    r = range(-max_speed, max_speed + 1)
    return [(a, b) for a in r for b in r if (a, b) != (0, 0)]


def make_clips(
    n_clips: int = DEFAULT_CLIPS,
    *,
    frames: int = FRAMES,
    size: int = SIZE,
    max_speed: int = MAX_SPEED,
    seed: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Build the clips: ``([n_clips, frames, size, size] float64, info)``.

    ``info`` holds ``digit`` (index into ``digits_data("train")``, ``[n]``), ``start``
    (top-left corner of the digit in frame 0, ``[n, 2]``) and ``velocity`` (``[n, 2]``),
    all int64. Deterministic in its arguments.
    """
    n_clips = check_steps(n_clips, name="n_clips")
    frames = check_steps(frames, name="frames", minimum=2)
    size = check_steps(size, name="size", minimum=_DIGIT)
    max_speed = check_steps(max_speed, name="max_speed")
    if (frames - 1) * max_speed > size - _DIGIT:
        raise AysError(
            f"a digit moving {max_speed} px/frame for {frames} frames leaves a {size}x{size} canvas; "
            f"need (frames - 1)·max_speed <= size - {_DIGIT}"
        )
    digits = digits_data("train", dtype=torch.float64)[:, 0]  # [N, 8, 8]
    if n_clips > digits.shape[0]:
        raise AysError(f"n_clips must be at most {digits.shape[0]} (one training digit per clip), got {n_clips}")
    g = torch.Generator().manual_seed(int(seed))
    choices = torch.tensor(_velocities(max_speed), dtype=torch.long)
    room = size - _DIGIT  # the corner may sit at 0..room
    vel = torch.empty(n_clips, 2, dtype=torch.long)
    start = torch.empty(n_clips, 2, dtype=torch.long)
    for i in range(n_clips):
        # Clip by clip from one stream: the first k clips do not depend on n_clips.
        v = choices[int(torch.randint(len(choices), (1,), generator=g))]
        span = (frames - 1) * v  # displacement over the clip
        lo = (-span).clamp_min(0)  # a negative velocity must start far enough in
        hi = room - span.clamp_min(0)
        u = torch.rand(2, generator=g, dtype=torch.float64)
        vel[i] = v
        start[i] = torch.minimum(lo + (u * (hi - lo + 1)).floor().long(), hi)
    clips = torch.full((n_clips, frames, size, size), _BACKGROUND, dtype=torch.float64)
    for i in range(n_clips):
        for t in range(frames):
            r, c = (start[i] + t * vel[i]).tolist()
            clips[i, t, r : r + _DIGIT, c : c + _DIGIT] = digits[i]
    info = {"digit": torch.arange(n_clips), "start": start, "velocity": vel}
    return clips, info


@functools.lru_cache(maxsize=4)
def _clips_cached(n_clips: int, frames: int, size: int, max_speed: int, seed: int) -> Tensor:
    return make_clips(n_clips, frames=frames, size=size, max_speed=max_speed, seed=seed)[0]


def digits_video(
    n_clips: int = DEFAULT_CLIPS,
    *,
    frames: int = FRAMES,
    size: int = SIZE,
    max_speed: int = MAX_SPEED,
    seed: int = 0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> GaussianMixture:
    """The ``digits-video`` problem: the empirical distribution of :func:`make_clips`, exact denoiser."""
    clips = _clips_cached(int(n_clips), int(frames), int(size), int(max_speed), int(seed))
    default = (n_clips, frames, size, max_speed, seed) == (DEFAULT_CLIPS, FRAMES, SIZE, MAX_SPEED, 0)
    name = "digits-video" if default else f"digits-video({n_clips}x{frames}x{size}x{size}, seed={seed})"
    return empirical(clips, name=name, sigma_min=sigma_min, sigma_max=sigma_max)


def motion_error(clips: Tensor, max_speed: int = MAX_SPEED) -> float:
    """Mean per-pixel squared departure of clips from constant-velocity rigid motion.

    For each clip ``[frames, H, W]``: ``min_v mean_t mean_px (shift(f_t, v) - f_{t+1})²`` over
    integer velocities ``|v| <= max_speed`` (zero included), then the mean over clips.
    Exactly 0 for every clip of :func:`make_clips`; frame noise, blur or clips that mix
    two motions raise it.
    """
    x = check_batch(clips, name="clips", min_ndim=4).detach().to(torch.float64)
    if x.ndim != 4 or x.shape[1] < 2:
        raise AysError(f"clips must have shape [N, frames >= 2, H, W], got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise AysError("clips hold NaN or inf")
    max_speed = check_steps(max_speed, name="max_speed", minimum=0)
    k = max_speed
    h, w = x.shape[-2], x.shape[-1]
    best = []
    for chunk in x.split(_MOTION_CHUNK):
        prev, nxt = chunk[:, :-1], chunk[:, 1:]
        # shift(prev, a, b)[r, c] = prev[r - a, c - b]: windows of the padded previous frame.
        padded = torch.nn.functional.pad(prev, (k, k, k, k), value=_BACKGROUND)
        errs = torch.stack([
            (padded[..., k - a : k - a + h, k - b : k - b + w] - nxt).square().mean(dim=(1, 2, 3))
            for a in range(-k, k + 1)
            for b in range(-k, k + 1)
        ])  # [velocities, chunk]
        best.append(errs.min(dim=0).values)
    return float(torch.cat(best).mean())
