"""``ays train``: fit a small EDM denoiser to a named problem and save it (see :mod:`ays.train`)."""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

import click

from ..validate import AysError
from ._ranks import in_session, say


def parse_net_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-N hidden=64 -N depth=2`` -> {"hidden": 64, "depth": 2}; values are integers."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AysError(f"network option {pair!r} must look like KEY=VALUE")
        try:
            out[key] = int(value)
        except ValueError:
            raise AysError(f"network option {key!r} needs an integer, got {value!r}") from None
    return out


def default_net(shape: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """The network for data of event shape ``shape``: an MLP for vectors, the conv net for [C, H, W]."""
    if len(shape) == 1:
        return "mlp", {"dim": shape[0]}
    if len(shape) == 3 and shape[1] % 2 == 0 and shape[2] % 2 == 0:
        return "conv", {"channels": shape[0]}
    raise AysError(f"no default network for data of shape {shape}; pass --net")


@click.command()
@click.argument("problem")
@click.option("--steps", type=int, default=20000, show_default=True, help="Optimiser steps.")
@click.option("--batch-size", type=int, default=None, help="Samples per step [default: 256 (mlp), 128 (conv)].")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak Adam learning rate (cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the weights and every random draw.")
@click.option("--ema", type=float, default=500.0, show_default=True, help="EMA half-life in steps (0: no EMA).")
@click.option("--net", "net_name", type=click.Choice(["mlp", "conv"]), default=None,
              help="Network [default: mlp for vectors, conv for images].")
@click.option("-N", "--net-option", "net_opts", multiple=True, metavar="KEY=VALUE",
              help="Network size, e.g. -N hidden=64 -N depth=2 (mlp), -N width=24 (conv).")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for PyTorch.")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False), required=True,
              help="Where to save the model (an ays-model/1 .pt file, written atomically).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None, help="Also save the loss curve here.")
@in_session(timeout=datetime.timedelta(days=7))
def train(problem: str, steps: int, batch_size: int | None, lr: float, seed: int, ema: float,
          net_name: str | None, net_opts: tuple[str, ...], threads: int, out: str, plot: str | None) -> None:
    """Train an EDM denoiser on PROBLEM (e.g. gmm-8x8, digits) and save it to --out.

    The full command is recorded in the saved file (see ays.train.model_info); it
    reproduces the weights exactly on the same machine and thread count. Under torchrun
    rank 0 trains alone while the other ranks wait (up to 7 days).
    """
    import torch
    from tqdm import tqdm

    from .. import nets, problems
    from .. import train as training
    from ..distributed import from_rank_zero, world_size
    from ..validate import check_positive, check_steps

    # Refuse bad settings before anything is built or drawn.
    check_steps(steps, name="--steps")
    if batch_size is not None:
        check_steps(batch_size, name="--batch-size")
    check_positive(lr, name="--lr")
    check_steps(seed, name="--seed", minimum=0)
    check_positive(ema, name="--ema", allow_zero=True)
    check_steps(threads, name="--threads")
    from ..io import check_writable

    check_writable(out, what="--out", create_parents=True)  # before the training, not after it
    if plot:
        check_writable(plot, what="--plot", create_parents=True)
    prob = problems.get(problem)
    default_name, kwargs = default_net(tuple(prob.shape))
    name = net_name or default_name
    if name != default_name:
        kwargs = {"dim": math.prod(prob.shape)} if name == "mlp" else {"channels": prob.shape[0]}
    kwargs.update(parse_net_options(net_opts))
    if batch_size is None:
        batch_size = 256 if name == "mlp" else 128
    torch.set_num_threads(threads)
    net = nets.build(name, seed=seed, **kwargs)

    command = f"ays train {problem} --steps {steps} --batch-size {batch_size} --lr {lr:g} --seed {seed} --ema {ema:g}"
    if net_name is not None:
        command += f" --net {net_name}"
    command += "".join(f" -N {o}" for o in net_opts) + f" --threads {threads} --out {out}"

    def fit() -> None:
        bar = tqdm(total=steps, unit="step", desc=f"train {problem}", dynamic_ncols=True, leave=False)
        last = [0]

        def progress(info: dict[str, Any]) -> None:
            bar.update(info["step"] - last[0])
            last[0] = info["step"]
            bar.set_postfix(loss=f"{info['loss']:.4f}")

        start = time.perf_counter()
        try:
            result = training.train(prob, net, steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema=ema,
                                    log_every=50, callback=progress)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        path = result.save(out, problem=problem, shape=list(prob.shape), command=command, seconds=round(seconds, 1),
                           parameters=nets.num_parameters(net))
        click.echo(f"saved {path}: {name} network, {nets.num_parameters(net)} parameters, final loss "
                   f"{result.final_loss():.4f} ± {result.final_loss_stderr():.4f} (mean ± standard error of the last "
                   f"{min(1000, steps)} steps), {seconds:.0f} s")
        if plot:
            # The exact denoiser's loss (the floor) is drawn for scale, as the Monte Carlo estimate it is:
            # ideal_loss's default draws, a few seconds at most.
            floor, floor_se = training.ideal_loss(prob, result.config["sigma_data"])
            result.plot(plot, title=f"{problem}: {name} network, {steps} steps, batch {batch_size}, lr {lr:g}",
                        floor=floor, floor_stderr=floor_se)
            click.echo(f"saved {plot} (ideal denoiser's loss, a Monte Carlo estimate: {floor:.4f} ± {floor_se:.4f})")

    # Training cannot be shared out (the gradient's sum over a batch would change): under torchrun
    # rank 0 trains while the other ranks wait for it (the session's timeout is long enough).
    if world_size() > 1:
        say(f"ays train: under torchrun rank 0 trains alone; the other {world_size() - 1} rank(s) wait", err=True)
    from_rank_zero(fit)
