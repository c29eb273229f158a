"""Pictures a person would rather look at than read: schedules on a log-sigma
axis, the KLUB of each interval, a metric against the step count.

matplotlib loads only when a plot is drawn (Agg backend, no screen needed);
files are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["plot_metric_vs_steps", "plot_samples", "plot_schedules", "save_figure"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> str:
    """Save a matplotlib figure atomically (rendered in memory, then :func:`ays.io.atomic_write_bytes`)."""
    from .io import atomic_write_bytes

    path = os.fspath(path)
    fmt = (os.path.splitext(path)[1].lstrip(".") or "png").lower()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_schedules(
    schedules: Mapping[str, torch.Tensor | Sequence[float]],
    path: str | os.PathLike[str],
    klub: Mapping[str, torch.Tensor | Sequence[float]] | None = None,
    title: str | None = None,
) -> str:
    """Each schedule as log-sigma against step index; with ``klub``, a second panel
    with the KLUB of each interval (bar per interval, log scale)."""
    plt = _pyplot()
    panels = 2 if klub else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for name, sig in schedules.items():
        s = torch.as_tensor(sig, dtype=torch.float64)
        s = s[s > 0]
        ax.plot(range(len(s)), s.numpy(), marker="o", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step i")
    ax.set_ylabel("noise level sigma_i")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if klub:
        kx = axes[0][1]
        width = 0.8 / max(len(klub), 1)
        for j, (name, values) in enumerate(klub.items()):
            v = torch.as_tensor(values, dtype=torch.float64).clamp_min(1e-12).numpy()
            kx.bar([i + j * width for i in range(len(v))], v, width=width, label=name)
        kx.set_yscale("log")
        kx.set_xlabel("interval i (from sigma_max down)")
        kx.set_ylabel("KLUB of interval")
        kx.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_metric_vs_steps(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    metric: str,
    group: str = "schedule",
    facet: str | None = "solver",
) -> str:
    """A metric against the step count, one line per ``group`` value, one panel per ``facet``.

    ``rows`` are records with keys ``steps``, ``metric`` (and optionally
    ``metric + '_err'`` for error bars), ``group`` and ``facet``.
    """
    plt = _pyplot()
    facets = sorted({r[facet] for r in rows}) if facet else [None]
    fig, axes = plt.subplots(1, len(facets), figsize=(5 * len(facets), 4), squeeze=False)
    for ax, fv in zip(axes[0], facets):
        sub = [r for r in rows if facet is None or r[facet] == fv]
        for g in sorted({r[group] for r in sub}):
            pts = sorted((r for r in sub if r[group] == g), key=lambda r: r["steps"])
            ys = [r[metric] for r in pts]
            errs = [r.get(metric + "_err", 0.0) or 0.0 for r in pts]
            ax.errorbar([r["steps"] for r in pts], ys, yerr=errs, marker="o", ms=3, capsize=2, label=str(g))
        ax.set_xlabel("steps")
        ax.set_ylabel(metric)
        if fv is not None:
            ax.set_title(str(fv))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_samples(samples: torch.Tensor, path: str | os.PathLike[str], title: str | None = None,
                 reference: torch.Tensor | None = None, max_images: int = 64) -> str:
    """Samples as a picture: a scatter plot for 2-D data (over ``reference`` in grey),
    otherwise a grid of images (the last two axes are height and width; several
    frames or channels of a sample are laid side by side)."""
    plt = _pyplot()
    x = samples.detach().to("cpu", torch.float64)
    if x[0].numel() == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        if reference is not None:
            r = reference.detach().to("cpu", torch.float64).reshape(len(reference), 2)
            ax.scatter(r[:, 0], r[:, 1], s=1, c="0.75", label="data")
        x = x.reshape(len(x), 2)
        ax.scatter(x[:, 0], x[:, 1], s=1, label="samples")
        ax.set_aspect("equal")
        ax.legend(fontsize=8, markerscale=5)
    else:
        x = x[:max_images]
        imgs = x.reshape(len(x), -1, x.shape[-2], x.shape[-1])  # [n, frames, h, w]
        rows = [torch.cat(list(img), dim=1) for img in imgs]  # frames side by side
        cols = max(1, int(len(rows) ** 0.5)) if imgs.shape[1] == 1 else 1
        grid_rows = [torch.cat(rows[i:i + cols], dim=1) for i in range(0, len(rows), cols)]
        width = max(r.shape[1] for r in grid_rows)
        grid = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in grid_rows], dim=0)
        fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1]))
        ax.imshow(grid.clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
