"""How the denoiser's calls are shared out across processes: the process group, ranks, shards, gathers.

The KLUB estimator (:func:`ays.klub.interval_klub`) and every optimiser built on
it spend nearly all their time in denoiser calls. This module decides which process
makes which of those calls; none of it changes *what* is estimated. (The device, dtype
and memory cap of the calls themselves are :mod:`ays.device`.)

**Processes** (``torchrun --nproc_per_node N ...``; NCCL on GPUs, gloo on CPUs).
Every rank creates the same draws from the same seed (common random numbers are
derived from ``(seed, keys)`` only, :func:`ays.klub.seed_for`), evaluates the
per-draw terms of its own contiguous share of the draws (:func:`shard`), and the
shares are all-gathered in rank order (:func:`gather_terms`). Each rank then holds
exactly the ``[intervals, samples]`` matrix of per-draw terms a single process
would have computed — the same numbers, summed in the same order — so the KLUB,
its standard error and every decision an optimiser takes on them are those of one
process, bit for bit (for a denoiser whose rows do not depend on the rest of the
batch; a network may differ in the last bits between batch compositions). Every
rank takes the same decisions, so no schedule is ever broadcast. Rank 0 alone
writes files (:mod:`ays.io` skips the write on the other ranks) and shows progress
bars; a failure on one rank (a NaN, an out-of-memory error) is raised on every
rank instead of leaving the others waiting in a collective (:func:`map_shards`).

Nothing here starts a process group by itself except :func:`init_from_env`,
which every command of the command line calls (through :func:`session`) when it was
launched by ``torchrun``. It imports ``torch.distributed.nn.functional`` before the group
exists, so that nothing torch imports later holds the group past ``destroy_process_group``
(the process could otherwise abort at exit; :func:`_bind_no_group`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .validate import AysError

__all__ = [
    "all_sum",
    "barrier",
    "from_rank_zero",
    "gather_terms",
    "init_from_env",
    "is_distributed",
    "is_rank_zero",
    "launched_by_torchrun",
    "local_rank",
    "map_ordered",
    "map_shards",
    "rank",
    "rank_zero_only",
    "session",
    "shard",
    "shard_noise",
    "world_size",
]

Tensor = torch.Tensor
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# --------------------------------------------------------------------------
# The process group
# --------------------------------------------------------------------------


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``, set by ``torchrun``; else 0)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def is_rank_zero() -> bool:
    """True on the process that writes files and shows progress (always, without a process group)."""
    return rank() == 0


def rank_zero_only(fn: F) -> F:
    """Decorator: run ``fn`` on rank 0 only; the other ranks get ``None`` (e.g. a progress callback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_rank_zero() else None

    return wrapper  # type: ignore[return-value]


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if is_distributed():
        dist.barrier()


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (``WORLD_SIZE`` > 1, ``RANK``) is set."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def init_from_env(backend: str | None = None, timeout: datetime.timedelta | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; True if one was joined.

    Backend: NCCL when CUDA is available, gloo otherwise (or ``backend``). With NCCL
    each process takes the GPU ``LOCAL_RANK``. ``timeout``: how long a collective waits
    for the other ranks (torch's default, 30 min for gloo, 10 for NCCL, when None). Does
    nothing (False) outside ``torchrun`` or when a group is already initialised.
    """
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    _bind_no_group()
    kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    # A group of its own in torchrun's store for each session of this process: destroy_process_group
    # restarts torch's group names, so a second group on the bare store would read the first one's
    # stale gloo addresses (a hang, or "connection reset", in its first collective).
    store, rank_, world = next(dist.rendezvous("env://", **kw))
    _SESSIONS.append(len(_SESSIONS))
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"ays-session-{_SESSIONS[-1]}", store),
                            rank=rank_, world_size=world, **kw)
    return True


_SESSIONS: list[int] = []  #: the groups this process has joined (every rank joins the same sequence)


def _bind_no_group() -> None:
    """Import ``torch.distributed.nn.functional`` while no process group exists.

    That module binds ``group.WORLD`` as the default argument of its functions when it is
    first imported. torch imports it lazily (through ``torch._dynamo``, when the first
    optimiser is built, e.g. ld3's RMSprop, or by ``import diffusers``); imported after
    ``init_process_group`` it holds the group past ``destroy_process_group``, a gloo worker
    thread is still releasing the last collective when the interpreter exits, and the
    process dies with SIGABRT ("terminate called without an active exception"; 4 of 20
    two-rank runs). Imported first, it binds ``None`` and the group is freed on destroy.
    (``importlib``: a plain ``import torch.distributed...`` here would make ``torch`` local.)
    """
    importlib.import_module("torch.distributed.nn.functional")


@contextlib.contextmanager
def session(backend: str | None = None, timeout: datetime.timedelta | None = None) -> Iterator[bool]:
    """``with session():`` joins the ``torchrun`` process group (if launched so) and leaves it at the end."""
    joined = init_from_env(backend, timeout)
    try:
        yield joined
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def shard(n: int, *, rank_: int | None = None, world: int | None = None) -> slice:
    """This rank's contiguous share of ``n`` items: ``[r·n // w, (r + 1)·n // w)``.

    Shares differ in size by at most one, cover ``range(n)`` in rank order and are
    known to every rank without communication.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return slice(r * n // w, (r + 1) * n // w)


def shard_noise(generator: torch.Generator, shape: tuple[int, ...], rows: slice,
                dtype: torch.dtype) -> Callable[[float, float], Tensor]:
    """A solver's ``noise_sampler`` that gives rows ``rows`` of the draws one process would make.

    Each call draws the whole ``shape`` batch from ``generator`` (on its device, as a solver
    does without a sampler) and keeps ``rows``: every rank advances the generator alike, so
    the rows it runs see exactly the noise they would see in a single process's batch.
    """

    def draw(sigma: float, sigma_next: float) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)[rows]

    return draw


def all_sum(value: float) -> float:
    """The sum of ``value`` over the ranks (``value`` itself without a process group): e.g. rows counted per rank."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return type(value)(t.item())


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_terms(values: Tensor, n: int, dim: int = -1) -> Tensor:
    """All-gather the shares (:func:`shard`) of ``n`` items along ``dim``: every rank gets the whole.

    ``values`` is this rank's share (``shard(n)`` items along ``dim``); the result
    is the concatenation in rank order, on ``values``' device and in its dtype —
    the tensor one process computing all ``n`` items would hold. Without a
    process group, ``values`` itself.
    """
    if not is_distributed():
        return values
    w = world_size()
    dim = dim % values.ndim
    sizes = [shard(n, rank_=r, world=w).stop - shard(n, rank_=r, world=w).start for r in range(w)]
    if values.shape[dim] != sizes[rank()]:
        raise AysError(f"rank {rank()} holds {values.shape[dim]} items along dim {dim}, its share is {sizes[rank()]}")
    dev = _comm_device()
    # all_gather needs equal shapes: pad every share to the largest, trim afterwards.
    big = max(sizes)
    padded_shape = list(values.shape)
    padded_shape[dim] = big
    local = torch.zeros(padded_shape, dtype=values.dtype, device=dev)
    local.narrow(dim, 0, values.shape[dim]).copy_(values)
    parts = [torch.empty_like(local) for _ in range(w)]
    dist.all_gather(parts, local)
    out = torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)
    return out.to(values.device)


def _agree_on_errors(error: BaseException | None) -> None:
    """Raise on every rank if any rank failed: the failing rank re-raises its own error, the others an AysError."""
    report = None if error is None else (isinstance(error, AysError), f"{type(error).__name__}: {error}", str(error))
    reports: list[Any] = [None] * world_size()
    dist.all_gather_object(reports, report)
    failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    if not failed:
        return
    if error is not None:
        raise error
    r, (user_facing, described, message) = failed[0]
    # A user-facing fault (a NaN at some sigma) reads the same on every rank; anything else says where it arose.
    raise AysError(message if user_facing else f"rank {r} failed: {described}")


def map_shards(n: int, fn: Callable[[slice], Tensor], dim: int = -1) -> Tensor:
    """``fn(shard(n))`` on every rank, gathered along ``dim`` (:func:`gather_terms`).

    Without a process group: ``fn(slice(0, n))``. With one, an exception on any
    rank is raised on all of them (the same message), so no rank is left waiting
    in the gather.
    """
    if not is_distributed():
        return fn(slice(0, n))
    local: Tensor | None = None
    error: BaseException | None = None
    try:
        local = fn(shard(n))
    except Exception as e:  # handed to every rank below
        error = e
    _agree_on_errors(error)
    assert local is not None
    return gather_terms(local, n, dim)


def map_ordered(fn: Callable[[int], Tensor], items: range) -> list[Tensor]:
    """``[fn(k) for k in items]`` computed round-robin across ranks, returned in order on every rank.

    For optimisers with their own loop over independent chunks (e.g. the ``dp``
    method's table, one chunk per seed): rank ``r`` computes the items
    ``k ≡ r (mod world)`` of each round of ``world`` items; ``fn(k)`` must return a
    tensor of the same shape and dtype for every ``k``. Summing the returned list
    in order gives the single-process sum bit for bit.
    """
    items = list(items)
    if not is_distributed():
        return [fn(k) for k in items]
    w, r = world_size(), rank()
    out: list[Tensor] = []
    for start in range(0, len(items), w):
        chunk = items[start : start + w]
        mine: Tensor | None = None
        error: BaseException | None = None
        if r < len(chunk):
            try:
                mine = fn(chunk[r])
            except Exception as e:
                error = e
        _agree_on_errors(error)
        # Ranks without an item this round send a copy of rank 0's shape: agree on it first.
        meta: list[Any] = [None] * w
        dist.all_gather_object(meta, None if mine is None else (tuple(mine.shape), str(mine.dtype)))
        shape, dtype_name = meta[0]
        dtype = getattr(torch, dtype_name.replace("torch.", ""))
        dev = _comm_device()
        send = torch.zeros(shape, dtype=dtype, device=dev) if mine is None else mine.to(dev)
        parts = [torch.empty(shape, dtype=dtype, device=dev) for _ in range(w)]
        dist.all_gather(parts, send.contiguous())
        home = torch.device("cpu") if mine is None else mine.device
        out += [p.to(home) for p in parts[: len(chunk)]]
    return out


def from_rank_zero(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` evaluated on rank 0 and broadcast (e.g. reading a checkpoint).

    An exception on rank 0 is raised on every rank (as :class:`AysError` with the
    same message on the others). Without a process group, just the call.
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    box: list[Any] = [None, None]
    error: BaseException | None = None
    if is_rank_zero():
        try:
            box[0] = fn(*args, **kwargs)
        except Exception as e:
            error = e
            # Send a description, not the exception: not every exception can be pickled.
            box = [None, (isinstance(e, AysError), f"{type(e).__name__}: {e}", str(e))]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[1] is not None:
        user_facing, described, message = box[1]
        raise AysError(message if user_facing else f"rank 0 failed: {described}")
    return box[0]
