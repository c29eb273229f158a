"""Every command and snippet of README.md and docs/*.md runs, so that no page can drift from the code.

What is run:

- every fenced ```bash block: each line that is not blank or a comment is one command (a line
  ending in a backslash continues on the next), a trailing ``# comment`` stripped;
- every fenced ```console block: each line starting with ``$ `` is a command, the lines after it
  (up to the next ``$ ``) are the output it shows;
- every fenced ```python block, as a script (```text holds sketches, and is not run).

Each command runs through the real command line, the ``ays`` console script of this
environment, in a fresh working directory that holds the files the pages name (``FIXTURES``):
a tiny saved Stable Diffusion 1.5 pipeline ``./my-sd15`` (``tiny_pipelines``: SD 1.5's
architecture and noise table at toy width, random weights, a letter tokenizer), a user module ``mypkg/models.py``,
``latents.pt``, schedule files and an interrupted run's checkpoint. A command that takes long as
written runs on small settings instead: ``SMALL`` maps the command as the page shows it to the
one run. ``NOT_RUN`` names the only commands that cannot run here, with the reason. A command
the pages show that is neither run as written (``ays`` or ``python``) nor in a table fails
``test_every_command_is_run``, so a new command in the docs without a test fails CI.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import tiny_pipelines

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # the environment's bin folder: python and the ays console script

# Small settings of the Monte Carlo work, shared by the SMALL commands below (the real ones use
# the defaults: thousands of chains and a 128-level table).
_OPT = "--samples 128 -O select_samples=64 -O grid=32 -O refine_budget=4 -O final_samples=32 -q"
_TRAIN = "--steps 30"
_EVAL = "--samples 128 --seeds 2 -q"

# Small settings of the per-family commands: the tiny pipelines are 16x16 images.
_FAMILY_SMALL = " --samples 8 --method coordinate -O max_sweeps=1 -O candidates=3 -q"

# The command as the docs show it -> the command run (same files, small settings).
SMALL: dict[str, str] = {
    "make demo": "ays demo --method dmn --eval-samples 256 --seeds 2 -q",
    "ays demo": "ays demo --method dmn --eval-samples 256 --seeds 2 -q",
    "ays optimize gmm-8x8 --solver dpmpp_2m_sde --steps 10 --out gmm.json":
        f"ays optimize gmm-8x8 --solver dpmpp_2m_sde --steps 10 --out gmm.json {_OPT}",
    "ays optimize digits --model trained --steps 10": "ays optimize digits --model trained --steps 10 --method dmn -q",
    "ays optimize mypkg.models:load --steps 20 --checkpoint run.ckpt.json":
        f"ays optimize mypkg.models:load --steps 20 --checkpoint run.ckpt.json {_OPT}",
    "ays optimize mypkg.models:load --steps 20 --checkpoint run.ckpt.json --resume":
        f"ays optimize mypkg.models:load --steps 20 --checkpoint run.ckpt.json {_OPT} --resume",
    'ays optimize --diffusers ./my-sd15 --prompt "a cat" --guidance-scale 7.5 --latents latents.pt --out sd15.json':
        'ays optimize --diffusers ./my-sd15 --prompt "a cat" --guidance-scale 7.5 --latents latents.pt --out sd15.json'
        " --steps 3 --method coordinate --samples 8 -O max_sweeps=1 -q",
    "ays evaluate gmm-8x8 --solvers euler,dpmpp_2m_sde --steps 6,8,10 --optimize --out results/":
        f"ays evaluate gmm-8x8 --solvers euler --steps 6 --optimize --method dmn --out results/ {_EVAL}",
    "ays evaluate gmm-8x8 --solvers euler,dpmpp_2m_sde --steps 6,8,10 --out results/":
        f"ays evaluate gmm-8x8 --solvers euler --steps 6 --out results/ {_EVAL}",
    "ays evaluate digits --model trained --schedules karras,loglinear,kl_optimal,my.json --optimize":
        "ays evaluate digits --model trained --schedules karras,loglinear,kl_optimal,my.json --optimize"
        f" --method dmn --solvers euler --steps 5 {_EVAL}",
    "ays evaluate gmm-8x8 --model model.pt --metrics sliced_w2,nll --seeds 5":
        "ays evaluate gmm-8x8 --model model.pt --metrics sliced_w2,nll --seeds 2 --solvers euler --steps 5"
        " --samples 128 -q",
    "ays plot gmm.json karras kl_optimal --steps 10 --klub gmm-8x8 -o compare.png":
        "ays plot gmm.json karras kl_optimal --steps 10 --klub gmm-8x8 -o compare.png --samples 256",
    **{f"ays train {p} --steps {n} --seed 0 --out {out} --plot {plot}": f"ays train {p} {_TRAIN} --seed 0 --out {out}"
       f" --plot {plot}" for p, n, out, plot in [
           ("gmm-8x8", 20000, "model.pt", "loss.png"),
           *[(f"gmm-{g}", 20000, f"src/ays/weights/gmm-{g}.pt", f"docs/img/train-loss-gmm-{g}.png")
             for g in ("8x8", "8x4", "6x6")],
       ]},
    "ays train digits --steps 6000 --seed 0 --out src/ays/weights/digits.pt --plot docs/img/train-loss-digits.png":
        f"ays train digits {_TRAIN} --seed 0 --out src/ays/weights/digits.pt --plot docs/img/train-loss-digits.png",
    "ays train digits --steps 6000 --seed 0 --out digits.pt -N width=16":
        f"ays train digits {_TRAIN} --seed 0 --out digits.pt -N width=16",
    **{cmd: cmd.replace(res, "--resolution 16").replace("--steps 10", "--steps 3") + _FAMILY_SMALL for cmd, res in [
        ("ays optimize --diffusers ./sd15 --images photos/ --resolution 512 --steps 10 --out sd15.json",
         "--resolution 512"),
        ("ays optimize --diffusers ./sdxl --prompts prompts.txt --resolution 1024 --guidance-scale 5 --steps 10"
         " --out sdxl.json", "--resolution 1024"),
        ("ays optimize --diffusers ./sd3 --images photos/ --resolution 1024 --guidance-scale 7 --steps 10"
         " --out sd3.json", "--resolution 1024"),
        ("ays optimize --diffusers ./flux-dev --prompts prompts.txt --resolution 1024 --guidance-scale 3.5"
         " --steps 10 --out flux.json", "--resolution 1024"),
    ]},
}

# The routed pipelines of the README (video): their tiny pipelines' sizes and frames.
SMALL.update({
    cmd: cmd.replace(res, f"--resolution {size}").replace(frames, f"--frames {n}").replace("--steps 10", "--steps 3")
    + _FAMILY_SMALL for cmd, res, frames, size, n in [
        ("ays optimize --diffusers ./wan2.1-t2v-1.3b --prompts prompts.txt --resolution 480x832 --frames 81"
         " --guidance-scale 5 --steps 10 --out wan.json", "--resolution 480x832", "--frames 81",
         tiny_pipelines.ROUTED_RESOLUTION["wan"], tiny_pipelines.FRAMES["wan"]),
        ("ays optimize --diffusers ./svd-xt --images stills/ --resolution 576x1024 --frames 25 --steps 10"
         " --out svd.json", "--resolution 576x1024", "--frames 25", tiny_pipelines.ROUTED_RESOLUTION["svd"],
         tiny_pipelines.FRAMES["svd"]),
    ]})

# The only commands the pages show that are not run here.
NOT_RUN: dict[str, str] = {
    "make test": "it runs ruff and this very test suite (CI runs it)",
    "torchrun --nproc_per_node 8 -m ays optimize mypkg.models:load --device cuda --dtype float16 --steps 10":
        "needs 8 CUDA devices; the same sharing runs on CPU processes in tests/test_distributed.py",
}

# Lines of python snippets replaced by small settings (the snippet as shown -> as run).
SMALL_PYTHON: dict[str, str] = {
    "samples=4096, seed=0)": "samples=128, seed=0, select_samples=64, grid=32, refine_budget=4, final_samples=32)",
    "steps=20000": "steps=30",
    "seeds=3, samples=4096,": "seeds=2, samples=256,",
    "seeds=2, samples=2048)": "seeds=2, samples=256)",
    "steps=10, noise=noise_from_scheduler(pipe.scheduler))":
        'steps=4, noise=noise_from_scheduler(pipe.scheduler), method="coordinate", samples=16, max_sweeps=1)',
}

# Commands with these words run in a fresh process, as a user's shell runs them: whether the
# user's module is found from the working directory is a property of the process.
IN_A_PROCESS = ("mypkg.",)

TIMEOUT_S = 60  # of one command in its own process
AS_WRITTEN_S = 20  # a command run as written that takes longer belongs in SMALL


# ----------------------------------------------------------------------------- reading the pages


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence
    lang: str
    text: str


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    command: str
    output: tuple[str, ...]  # what a console block shows after the command

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown page, with their info string."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^```\s*(\S*)\s*$", line)
        if fence and lang is None:
            lang, start, body = fence.group(1), i, []
        elif line.startswith("```") and lang is not None:
            blocks.append(Block(path.relative_to(ROOT).as_posix(), start, lang, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{path}: unclosed code block at line {start}"
    return blocks


def strip_comment(line: str) -> str:
    """Drop a trailing ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def block_commands(block: Block) -> list[Command]:
    lines = block.text.splitlines()
    found: list[Command] = []
    if block.lang == "bash":
        i = 0
        while i < len(lines):
            first, text = i, strip_comment(lines[i])
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + strip_comment(lines[i]).lstrip()
            if text and not text.lstrip().startswith("#"):
                found.append(Command(block.page, block.line + 1 + first, text.strip(), ()))
            i += 1
    elif block.lang == "console":
        starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
        assert starts, f"{block.page}:{block.line}: a console block without a '$ ' command"
        for k, i in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(lines)
            output = tuple(line.rstrip() for line in lines[i + 1:end] if line.strip())
            found.append(Command(block.page, block.line + 1 + i, strip_comment(lines[i][2:]), output))
    return found


BLOCKS = [b for page in PAGES for b in read_blocks(page)]
COMMANDS = [c for b in BLOCKS for c in block_commands(b)]
SNIPPETS = [b for b in BLOCKS if b.lang == "python"]
def as_run(command: str) -> str | None:
    """The command line actually run for a command of the pages (None: not run)."""
    if command in NOT_RUN:
        return None
    return SMALL.get(command, command)


# Each distinct command line runs once: where a console block shows its output, else where it
# first appears (``make demo`` and ``ays demo`` are one run).
UNIQUE = list({as_run(c.command) or c.command: c for c in sorted(COMMANDS, key=lambda c: bool(c.output))}.values())


# ----------------------------------------------------------------------------- fixtures

MYPKG = '''\
"""A user's model, as `ays optimize mypkg.models:load` finds it: a denoiser and its data."""
import os

import ays

_calls = 0


def load():
    prob = ays.problems.get("gmm-8x8")
    limit = int(os.environ.get("MYPKG_INTERRUPT_AFTER", "0"))  # the tests' stand-in for Ctrl-C

    def denoiser(x, sigma):
        global _calls
        _calls += 1
        if limit and _calls > limit:
            raise KeyboardInterrupt
        return prob.denoiser(x, sigma)

    return denoiser, prob.sample
'''


def run(argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one command line of the pages: ``ays`` is this environment's console script."""
    words = shlex.split(argv)
    program = {"ays": str(BIN / "ays"), "python": sys.executable}.get(words[0])
    assert program is not None, f"no way to run {argv!r}: put it in SMALL or NOT_RUN"
    full_env = {**os.environ, "HOME": str(cwd), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **(env or {})}
    full_env.pop("PYTHONPATH", None)  # as a user's shell: the working directory is not on the path
    return subprocess.run([program, *words[1:]], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def run_here(argv: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
             ) -> subprocess.CompletedProcess[str]:
    """Run one ``ays`` command line by executing the console script in this process.

    The same script and arguments as :func:`run`, without a second start of Python and torch
    (most of a small command's time). Commands whose meaning depends on the process itself (the
    import path of a user's module: ``IN_A_PROCESS``) go through :func:`run` instead.
    """
    words = shlex.split(argv)
    assert words[0] == "ays", argv
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(cwd))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [str(BIN / "ays"), *words[1:]])
    capsys.readouterr()
    try:
        runpy.run_path(str(BIN / "ays"), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(words, code, out.out, out.err)


def in_a_process(argv: str) -> bool:
    """Run in a fresh process: anything but ays, and ays commands that import the user's module."""
    return not argv.startswith("ays ") or any(word in argv for word in IN_A_PROCESS)


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FIXTURES: the files the pages name, built once per session."""
    import ays

    root = tmp_path_factory.mktemp("doc-fixtures") / "work"
    root.mkdir()
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "models.py").write_text(MYPKG)
    for folder in ("src/ays/weights", "docs/img", "ComfyUI/custom_nodes"):
        (root / folder).mkdir(parents=True)
    torch.save(0.8 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2)), root / "latents.pt")
    prob = ays.problems.get("gmm-8x8")
    gmm = ays.optimize(prob.denoiser, prob.sample, steps=10, solver="dpmpp_2m_sde", method="dmn")
    gmm.save(root / "gmm.json")
    gmm.save(root / "my.json")
    trained = ays.train.train(prob, ays.nets.build("mlp", seed=0), steps=30, seed=0)
    trained.save(root / "model.pt")
    pytest.importorskip("diffusers")
    shutil.move(tiny_pipelines.build("sd15", tmp_path_factory.mktemp("pipelines")), root / "my-sd15")
    # The model families of the README: tiny random pipelines as users have them, captioned
    # images and a prompt file; the schedule files the later commands read.
    for family, folder in (("sd15", "sd15"), ("sdxl", "sdxl"), ("sd3", "sd3"), ("flux", "flux-dev"),
                           ("wan", "wan2.1-t2v-1.3b"), ("svd", "svd-xt")):
        shutil.move(tiny_pipelines.build(family, tmp_path_factory.mktemp("pipelines")), root / folder)
    from PIL import Image

    (root / "photos").mkdir()
    for i, caption in enumerate(("a cat", "a dog", "a red house")):
        pixels = torch.randint(0, 256, (20, 24, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / "photos" / f"im{i}.png")
        (root / "photos" / f"im{i}.txt").write_text(caption + "\n")
    (root / "prompts.txt").write_text("a cat\na dog\n")
    (root / "stills").mkdir()  # SVD's conditioning images
    for i in range(2):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=torch.Generator().manual_seed(10 + i), dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / "stills" / f"still{i}.png")
    for cmd in SMALL:
        if cmd.startswith("ays optimize --diffusers ./") and any(f" --out {name}.json" in cmd for name in (
                "sdxl", "sd3", "flux", "wan", "svd")):
            done = run(SMALL[cmd], root)
            assert done.returncode == 0, done.stderr
    sd15 = ays.OptimizeResult(sigmas=ays.schedules.published("sd15", steps=10), steps=10, solver="dpmpp_2m",
                              method="published", model="sd15")
    sd15.save(root / "sd15.json")
    # An interrupted run, for the --resume command: the user's denoiser stops after 20 calls.
    interrupted = SMALL["ays optimize mypkg.models:load --steps 20 --checkpoint run.ckpt.json"]
    done = run(interrupted, root, env={"MYPKG_INTERRUPT_AFTER": "20"})
    assert done.returncode == 130 and (root / "run.ckpt.json").exists(), done.stderr
    return root


@pytest.fixture
def workdir(fixtures: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the fixtures, so that no command sees another's files."""
    work = tmp_path / "work"
    shutil.copytree(fixtures, work, symlinks=True)
    yield work


# ----------------------------------------------------------------------------- the tests


def test_the_pages_are_read() -> None:
    # The reader must find what the pages hold: a console block's output, a bash line's comment.
    assert {"README.md", "docs/cli.md", "docs/maths.md"} <= {p.relative_to(ROOT).as_posix() for p in PAGES}
    demo = [c for c in COMMANDS if c.command == "ays demo"]
    assert demo and demo[0].output[0].startswith("ays demo: gmm-8x8")
    assert strip_comment('ays x --prompt "a # b"   # note') == 'ays x --prompt "a # b"'
    assert len(UNIQUE) >= 20 and len(SNIPPETS) >= 5
    # Every block says what it is: run (bash, console, python) or a sketch (text); no block escapes.
    untagged = [f"{b.page}:{b.line}" for b in BLOCKS if b.lang not in ("bash", "console", "python", "text")]
    assert not untagged, f"code blocks without bash/console/python/text: {untagged}"


def test_every_command_is_run() -> None:
    # Each command of the pages is run as written (ays, python) or listed in SMALL; NOT_RUN is
    # the only exception, and neither table names a command the pages no longer show.
    shown = {c.command for c in COMMANDS}
    for c in UNIQUE:
        if c.command not in NOT_RUN and c.command not in SMALL:
            assert c.command.split()[0] in ("ays", "python"), f"{c.id}: {c.command!r} is not run: add it to SMALL"
    assert set(SMALL) <= shown, f"SMALL names commands no page shows: {sorted(set(SMALL) - shown)}"
    assert set(NOT_RUN) <= shown, f"NOT_RUN names commands no page shows: {sorted(set(NOT_RUN) - shown)}"
    snippets = "".join(b.text for b in SNIPPETS)
    assert all(key in snippets for key in SMALL_PYTHON), "SMALL_PYTHON names lines no snippet shows"


def _lines_in_order(expected: list[str], text: str) -> list[str]:
    """The expected lines that do not appear, in order, among the lines of ``text``."""
    have = [line.rstrip() for line in text.splitlines()]
    missing, at = [], 0
    for line in expected:
        try:
            at = have.index(line, at) + 1
        except ValueError:
            missing.append(line)
    return missing


@pytest.mark.parametrize("cmd", [c for c in UNIQUE if as_run(c.command)], ids=lambda c: c.id)
def test_command(cmd: Command, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = as_run(cmd.command)
    assert argv is not None
    start = time.perf_counter()
    done = run(argv, workdir) if in_a_process(argv) else run_here(argv, workdir, monkeypatch, capsys)
    seconds = time.perf_counter() - start
    assert argv != cmd.command or seconds < AS_WRITTEN_S, f"{cmd.id}: {seconds:.0f} s as written: add it to SMALL"
    assert done.returncode == 0, f"{cmd.id}: {argv}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    if cmd.output:
        # As written, every line shown must appear; on small settings the numbers differ, so the
        # first and the last line (the header and what was written) must.
        shown = list(cmd.output) if argv == cmd.command else [cmd.output[0], cmd.output[-1]]
        missing = _lines_in_order(shown, done.stdout + done.stderr)
        assert not missing, f"{cmd.id}: {argv} does not print {missing}; it printed:\n{done.stdout}{done.stderr}"


def small_python(text: str) -> str:
    for shown, small in SMALL_PYTHON.items():
        text = text.replace(shown, small)
    return text


@pytest.mark.parametrize("block", SNIPPETS, ids=lambda b: f"{b.page}:{b.line}")
def test_python_snippet(block: Block, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In this process (torch is loaded once), as a script in the fixtures' folder; a snippet
    # that writes to ~ writes there too.
    script = workdir / "snippet.py"
    script.write_text(small_python(block.text))
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HOME", str(workdir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runpy.run_path(str(script), run_name="__main__")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "BENCHMARKS.md"], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page: Path) -> None:
    # Every relative link of a page names a file that exists and, after '#', one of its headings.
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to a missing file {target!r}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", file.read_text(), flags=re.S), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: no heading for {target!r}"


def test_cli_reference_names_every_subcommand_and_option() -> None:
    # docs/cli.md is the reference: a subcommand or option the code has and the page does not fails.
    import click

    from ays.cli import cli

    text = (ROOT / "docs" / "cli.md").read_text()
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None and f"## `ays {name}`" in text, f"docs/cli.md has no section for ays {name}"
        options = {o for p in command.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
        missing = sorted(o for o in options if o.startswith("--") and o != "--help" and o not in text)
        assert not missing, f"docs/cli.md does not describe ays {name} {', '.join(missing)}"
