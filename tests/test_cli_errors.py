"""Every ``ays`` command answers every malformed argument with exit code 2 and one line on stderr.

Each case runs the command in-process through :func:`ays.cli.main` (as the
``ays`` script does): an exception that escapes it - a traceback - fails the
test, as does any exit status but 2 or any stderr but one ``ays: error: ...``
line. The cases go through every command ``ays --help`` lists, with non-numbers,
negative and zero counts, unknown names, missing files, corrupt and foreign
files, unwritable output paths, and directories where files are expected (and a
file where a folder is expected). Workloads are tiny, so a check that comes too
late still ends quickly (and the test still fails on a late success).
"""

from __future__ import annotations

import json

import pytest

from ays.cli import _COMMANDS, main

#: Placeholders, made per test: DIR (a folder), MISSING.* (no such file), CORRUPT.json (truncated, with a
#: NUL byte), FOREIGN.json (JSON of another format) and FILE (a plain file; FILE/x is a path that cannot be
#: written even by root, its parent being a file).
_CASES: list[tuple[str, ...]] = [
    # top level
    ("nosuchcommand",),
    ("--nosuchflag",),
    # schedule
    ("schedule", "sdxl", "--steps", "abc"),
    ("schedule", "sdxl", "--steps", "-3"),
    ("schedule", "sdxl", "--steps", "0"),
    ("schedule", "nosuch"),
    ("schedule", "MISSING.json"),
    ("schedule", "CORRUPT.json"),
    ("schedule", "FOREIGN.json"),
    ("schedule", "DIR"),
    ("schedule", "karras", "--sigma-min", "-1", "--sigma-max", "80"),
    ("schedule", "karras", "--sigma-min", "nan", "--sigma-max", "80"),
    ("schedule", "karras", "--sigma-min", "100"),  # above EDM's default sigma_max of 80
    ("schedule", "karras", "--sigma-min", "80", "--sigma-max", "1"),
    ("schedule", "sdxl", "-O", "rho"),
    ("schedule", "karras", "--sigma-min", "0.002", "--sigma-max", "80", "-O", "nosuch=1"),
    ("schedule", "karras", "--sigma-min", "0.002", "--sigma-max", "80", "-O", "rho=abc"),
    ("schedule", "sdxl", "--format", "nosuch"),
    ("schedule", "sdxl", "-o", "FILE/out.txt"),
    ("schedule", "sdxl", "-o", "DIR"),
    # optimize
    ("optimize", "gaussian", "--steps", "abc"),
    ("optimize", "gaussian", "--steps", "-1"),
    ("optimize", "gaussian", "--steps", "0"),
    ("optimize", "gaussian", "--samples", "1"),
    ("optimize", "gaussian", "--samples", "-5"),
    ("optimize", "nosuch"),
    ("optimize",),
    ("optimize", "gaussian", "--solver", "nosuch"),
    ("optimize", "gaussian", "--method", "nosuch"),
    ("optimize", "gaussian", "--model", "MISSING.pt"),
    ("optimize", "gaussian", "--model", "DIR"),
    ("optimize", "gaussian", "--model", "CORRUPT.json"),
    ("optimize", "gaussian", "--sigma-min", "-1"),
    ("optimize", "gaussian", "--sigma-min", "10", "--sigma-max", "1"),
    ("optimize", "gaussian", "-O", "bad"),
    ("optimize", "gaussian", "-O", "nosuch=1"),
    ("optimize", "gaussian", "-O", "max_sweeps=-2"),
    ("optimize", "gaussian", "--batch-size", "0"),
    ("optimize", "gaussian", "--max-memory", "lots"),
    ("optimize", "gaussian", "--max-memory", "-1"),
    ("optimize", "gaussian", "--dtype", "float8"),
    ("optimize", "gaussian", "--device", "nonsense"),
    ("optimize", "gaussian", "--out", "DIR"),
    ("optimize", "gaussian", "--out", "FILE/s.json"),
    ("optimize", "gaussian", "--checkpoint", "DIR"),
    ("optimize", "gaussian", "--checkpoint", "FILE/c.json"),
    ("optimize", "gaussian", "--plot", "FILE/p.png"),
    ("optimize", "gaussian", "--resume", "--checkpoint", "MISSING.json"),
    ("optimize", "gaussian", "--resume", "--checkpoint", "CORRUPT.json"),
    ("optimize", "gaussian", "--resume", "--checkpoint", "FOREIGN.json"),
    ("optimize", "nosuch_module_xyz:load"),
    ("optimize", "MISSING.py:load"),
    ("optimize", "../mypkg/models:load"),  # a path without .py: not a module name
    ("optimize", "gaussian", "--guidance-scale", "-3"),
    ("optimize", "gaussian", "--guidance-scale", "nan"),
    ("sample", "gaussian", "--guidance-scale", "-3"),
    ("optimize", "--diffusers", "MISSING"),
    ("optimize", "--diffusers", "FILE"),
    # sample
    ("sample", "gaussian", "--count", "0"),
    ("sample", "gaussian", "--count", "abc"),
    ("sample", "gaussian", "--count", "-4"),
    ("sample", "gaussian", "--steps", "-1"),
    ("sample", "gaussian", "--steps", "0"),
    ("sample", "nosuch"),
    ("sample", "gaussian", "--schedule", "nosuch"),
    ("sample", "gaussian", "--schedule", "MISSING.json"),
    ("sample", "gaussian", "--schedule", "CORRUPT.json"),
    ("sample", "gaussian", "--solver", "nosuch"),
    ("sample", "gaussian", "-O", "nosuch=1"),
    ("sample", "gaussian", "--sigma-min", "-1"),
    ("sample", "gaussian", "--model", "MISSING.pt"),
    ("sample", "gaussian", "--out", "DIR"),
    ("sample", "gaussian", "--out", "FILE/x.pt"),
    ("sample", "gaussian", "--plot", "FILE/x.png"),
    # plot
    ("plot",),
    ("plot", "nosuch"),
    ("plot", "karras", "--steps", "0"),
    ("plot", "karras", "--steps", "x"),
    ("plot", "MISSING.json"),
    ("plot", "CORRUPT.json"),
    ("plot", "karras", "--klub", "nosuch"),
    ("plot", "karras", "--klub", "gaussian", "--samples", "0"),
    ("plot", "karras", "--sigma-min", "0"),
    ("plot", "karras", "--out", "FILE/p.png"),
    ("plot", "karras", "--out", "DIR"),
    # demo
    ("demo", "--steps", "0"),
    ("demo", "--steps", "x"),
    ("demo", "--problem", "nosuch"),
    ("demo", "--solver", "nosuch"),
    ("demo", "--samples", "-1"),
    ("demo", "--samples", "16", "--seeds", "0"),
    ("demo", "--samples", "16", "--eval-samples", "0"),
    ("demo", "--model", "MISSING.pt"),
    ("demo", "--out", "FILE"),
    # train
    ("train", "gaussian", "--out", "m.pt", "--steps", "0"),
    ("train", "gaussian", "--out", "m.pt", "--steps", "x"),
    ("train", "gaussian", "--out", "m.pt", "--lr", "-1"),
    ("train", "gaussian", "--out", "m.pt", "--threads", "0"),
    ("train", "gaussian", "--out", "m.pt", "--batch-size", "0"),
    ("train", "gaussian"),
    ("train", "nosuch", "--out", "m.pt"),
    ("train", "gaussian", "--out", "m.pt", "--net", "nosuch"),
    ("train", "gaussian", "--out", "m.pt", "-N", "hidden=abc"),
    ("train", "gaussian", "--out", "m.pt", "-N", "nosuch=3", "--steps", "2"),
    ("train", "gaussian", "--out", "DIR", "--steps", "2"),
    ("train", "gaussian", "--out", "FILE/m.pt", "--steps", "2"),
    # evaluate
    ("evaluate", "gaussian", "--steps", "a,b"),
    ("evaluate", "gaussian", "--steps", "0"),
    ("evaluate", "gaussian", "--steps", ","),
    ("evaluate", "gaussian", "--seeds", "0"),
    ("evaluate", "gaussian", "--samples", "-1"),
    ("evaluate", "gaussian", "--schedules", "nosuch"),
    ("evaluate", "gaussian", "--schedules", "MISSING.json"),
    ("evaluate", "gaussian", "--schedules", "CORRUPT.json"),
    ("evaluate", "gaussian", "--solvers", "nosuch"),
    ("evaluate", "gaussian", "--metrics", "nosuch"),
    ("evaluate", "gaussian", "--model", "MISSING.pt"),
    ("evaluate", "gaussian", "--out", "FILE", "--samples", "16", "--seeds", "2", "--steps", "2"),
    ("evaluate", "nosuch"),
]


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    (tmp_path / "CORRUPT.json").write_bytes(b'{"format": "ays-schedule/1", "sigmas": [80.0, 1.0, \x00')
    (tmp_path / "FOREIGN.json").write_text(json.dumps({"format": "something-else/2", "sigmas": [1, 2]}))
    (tmp_path / "FILE").write_text("a plain file\n")
    return tmp_path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_every_command_is_covered():
    assert {args[0] for args in _CASES if not args[0].startswith("-")} - {"nosuchcommand"} == set(_COMMANDS)


@pytest.mark.parametrize("args", _CASES, ids=[" ".join(a) for a in _CASES])
def test_malformed_argument_exits_2_with_one_line(args, paths, capsys):
    argv = [str(paths / a) if a.split("/")[0] in ("DIR", "MISSING.json", "MISSING.pt", "MISSING.py:load",
                                                   "MISSING", "CORRUPT.json", "FOREIGN.json", "FILE")
            else a for a in args]
    code, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("ays: error: "), err
    assert "Traceback" not in err
    # Nothing half-done is left behind.
    assert not [p for p in paths.rglob("*.tmp")]
