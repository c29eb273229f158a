"""Plots are written atomically as real images, and refuse nothing valid."""

from __future__ import annotations

from pathlib import Path

from ays import schedules as S
from ays.plot import plot_metric_vs_steps, plot_schedules


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_schedule_plot_with_klub_panel(tmp_path: Path) -> None:
    scheds = {"karras": S.karras(6, 0.002, 80), "sampling": S.to_sampling(S.loglinear(6, 0.002, 80))}
    out = tmp_path / "sub" / "s.png"
    plot_schedules(scheds, out, klub={"karras": [1.0, 0.5, 0.2, 0.1, 0.05, 0.01]}, title="t")
    w, h = _png_size(out)
    assert w > h > 100  # two panels side by side
    assert [p.name for p in out.parent.iterdir()] == ["s.png"]  # no temp file left behind


def test_metric_vs_steps_plot(tmp_path: Path) -> None:
    rows = [{"steps": n, "w2": 1.0 / n, "w2_err": 0.01, "schedule": s, "solver": v}
            for n in (5, 10) for s in ("a", "b") for v in ("euler", "heun")]
    out = tmp_path / "m.png"
    plot_metric_vs_steps(rows, out, "w2")
    assert _png_size(out)[0] > 300
