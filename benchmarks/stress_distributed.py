"""Repeated two-rank launches: how often a ``torchrun`` run dies at exit (SIGABRT).

A run whose ranks have all finished their work could still die as the interpreter shut
down ("terminate called without an active exception", then torchrun's SIGTERM to the
other rank): a process group outlived ``destroy_process_group`` (docs/scale.md). Such
an abort comes at random, so it is counted over many launches of three kinds, each
two gloo ranks on 127.0.0.1:

- ``methods``: the 2-rank script of every method of tests/test_distributed.py
  (``METHODS_SCRIPT``: dp, gits, oss, ld3, ays; ld3's optimiser imports ``torch._dynamo``);
- ``ld3``: ``torchrun --nproc_per_node 2 -m ays optimize gaussian --method ld3`` (small);
- ``diffusers``: ``torchrun --nproc_per_node 2 -m ays optimize --diffusers DIR --images IMG``
  on the tiny SD 1.5 pipeline of tests/tiny_pipelines.py (``import diffusers`` inside the
  session), method ``coordinate`` at the smallest settings.

A launch *aborts* when torchrun's exit status is not 0 or its output says
``terminate called``. The methods script also records, on each rank, whether the process
group was freed when the session destroyed it (a weak reference): the cause of the abort,
seen on every launch where it is present, not only on the unlucky ones. Each launch is one
line of ``launches.jsonl`` (kind, index, exit status, abort, seconds), appended as it
ends; a rerun with the same ``--out`` continues where it stopped. ``--src`` points the
launches at another checkout's ``src`` (e.g. main's, to count the aborts before a fix).

    nice -n 10 python benchmarks/stress_distributed.py --launches 30
    nice -n 10 python benchmarks/stress_distributed.py --launches 10 --src /path/to/main/src \\
        --out benchmarks/results/stress_distributed-before

Results: ``benchmarks/results/stress_distributed[...]/`` (launches.jsonl, summary.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("methods", "ld3", "diffusers")

LD3 = ["optimize", "gaussian", "--method", "ld3", "--steps", "4", "-O", "teacher_steps=16", "-O",
       "teacher_samples=12", "-O", "valid_samples=4", "-O", "epochs=1", "--samples", "64", "-q"]
DIFFUSERS = ["--resolution", "16", "--guidance-scale", "2", "--steps", "3", "--samples", "8", "--method",
             "coordinate", "-O", "max_sweeps=1", "-O", "candidates=3", "-q"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), *args]


def _fixtures(work: Path) -> dict[str, Path]:
    """The methods script, the tiny SD 1.5 pipeline and a captioned image folder, made once."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from PIL import Image

    import test_distributed
    import tiny_pipelines

    script = work / "methods.py"
    script.write_text(test_distributed.METHODS_SCRIPT)
    pipeline = tiny_pipelines.build("sd15", work / "pipelines")
    images = work / "images"
    images.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i, caption in enumerate(["a cat", "a dog", "sky", "a cow"]):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / f"im{i}.png")
        (images / f"im{i}.txt").write_text(caption + "\n")
    return {"methods": script, "pipeline": pipeline, "images": images}


def _command(kind: str, fix: dict[str, Path], run: Path) -> list[str]:
    if kind == "methods":
        return _torchrun([str(fix["methods"]), str(run)])
    if kind == "ld3":
        return _torchrun(["-m", "ays", *LD3, "--out", str(run / "s.json")])
    return _torchrun(["-m", "ays", "optimize", "--diffusers", str(fix["pipeline"]), "--images", str(fix["images"]),
                      *DIFFUSERS, "--out", str(run / "s.json")])


def launch(kind: str, fix: dict[str, Path], src: Path, work: Path, timeout: float) -> dict[str, Any]:
    """One two-rank launch of ``kind``: its exit status, whether it aborted, and how long it took."""
    run = Path(tempfile.mkdtemp(dir=work, prefix=f"{kind}-"))
    env = {**os.environ, "PYTHONPATH": str(src), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "AYS_CACHE": str(work / "cache")}
    start = time.perf_counter()
    try:
        proc = subprocess.run(_command(kind, fix, run), capture_output=True, text=True, timeout=timeout, env=env)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, text = None, f"timed out after {timeout:.0f} s\n{e.stderr or ''}"
    seconds = time.perf_counter() - start
    terminate = "terminate called" in text
    out = {"kind": kind, "rc": code, "abort": code != 0 or terminate, "terminate_called": terminate,
           "seconds": round(seconds, 1)}
    if kind == "methods":  # the cause itself, seen every time: did the group outlive destroy_process_group?
        released = [(run / f"released{r}.txt").read_text() if (run / f"released{r}.txt").exists() else "?"
                    for r in (0, 1)]
        out["group_outlived_destroy"] = released != ["True", "True"]
    if out["abort"]:
        out["tail"] = text[-1500:]
    return out


def summary(records: list[dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}`", "", "| kind | launches | aborts | of which 'terminate called' | "
             "group outlived destroy | median s |", "|---|---|---|---|---|---|"]
    for kind in KINDS:
        mine = [r for r in records if r["kind"] == kind]
        if not mine:
            continue
        secs = sorted(r["seconds"] for r in mine)
        seen = [r["group_outlived_destroy"] for r in mine if "group_outlived_destroy" in r]
        held = f"{sum(seen)} of {len(seen)}" if kind == "methods" else "-"
        lines.append(f"| {kind} | {len(mine)} | {sum(r['abort'] for r in mine)} | "
                     f"{sum(r['terminate_called'] for r in mine)} | {held} | {secs[len(secs) // 2]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launches", type=int, default=30, help="Launches of each kind.")
    ap.add_argument("--kinds", default=",".join(KINDS), help="Comma-separated kinds: methods, ld3, diffusers.")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="The ays sources the launches import.")
    ap.add_argument("--timeout", type=float, default=420.0, help="Seconds per launch.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stress_distributed")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",")]
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds must name some of {', '.join(KINDS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "launches.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    command = "python benchmarks/stress_distributed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="ays-stress-") as tmp:
        work = Path(tmp)
        fix = _fixtures(work)
        # Interleaved, so that a change in the machine's load falls on every kind alike.
        for i in range(args.launches):
            for kind in kinds:
                if sum(r["kind"] == kind for r in records) > i:
                    continue  # done in an earlier run
                rec = {"index": i, **launch(kind, fix, args.src.resolve(), work, args.timeout)}
                records.append(rec)
                with log.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{kind} #{i}: rc={rec['rc']} abort={rec['abort']} {rec['seconds']} s", flush=True)
    (args.out / "summary.md").write_text(summary(records, command))
    print(summary(records, command))


if __name__ == "__main__":
    main()
