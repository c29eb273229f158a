"""``ays schedule`` and the command line's error contract: exit 2, one line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ays import schedules as S
from ays.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_schedule_prints_the_heuristic(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schedule", "karras", "-n", "5", "--sigma-min", "0.002", "--sigma-max", "80", "-f", "json"],
                       capsys)
    assert code == 0
    assert torch.allclose(torch.tensor(json.loads(out), dtype=torch.float64), S.karras(5, 0.002, 80.0))


def test_schedule_options_reach_the_heuristic(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schedule", "kl_optimal", "-n", "4", "--sigma-min", "0.01", "--sigma-max", "10",
                        "-O", "c=2", "-f", "json"], capsys)
    assert code == 0
    assert torch.allclose(torch.tensor(json.loads(out), dtype=torch.float64), S.kl_optimal(4, 0.01, 10.0, c=2.0))


def test_published_schedule_in_sampling_form_ends_in_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schedule", "sdxl", "-n", "20", "-f", "sampling"], capsys)
    values = json.loads(out)
    assert code == 0 and len(values) == 21 and values[-1] == 0.0 and values[0] == pytest.approx(14.615)


def test_a_model_folder_named_like_a_table_does_not_hide_it(tmp_path, monkeypatch, capsys) -> None:
    # Users keep pipelines in ./sdxl; `ays schedule sdxl` still means NVIDIA's table.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sdxl").mkdir()
    for fmt in ("sampling", "comfyui"):
        code, out, err = run(["schedule", "sdxl", "-n", "10", "-f", fmt], capsys)
        assert code == 0, err
        assert json.loads(out)[:2] == pytest.approx([14.615, 6.315], abs=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule", "nope"], "unknown schedule 'nope'"),
        (["schedule", "karras", "-n", "0", "--sigma-min", "1", "--sigma-max", "2"], "steps must be at least 1"),
        (["schedule", "karras", "-n", "3", "--sigma-min", "2", "--sigma-max", "1"],
         "--sigma-min must be below --sigma-max"),
        (["schedule", "karras", "-n", "x"], "'x' is not a valid integer"),
        (["schedule", "karras", "-n", "3", "--sigma-min", "1", "--sigma-max", "2", "-O", "rho"], "KEY=VALUE"),
        (["schedule", "missing.json"], "missing.json"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ays: error:")
    assert message in err


def test_the_installed_command_has_no_traceback_on_bad_input() -> None:
    proc = subprocess.run([sys.executable, "-m", "ays", "schedule", "karras", "-n", "-3"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
