"""How the denoiser is run at scale: across processes, in bounded memory, in a chosen precision.

The KLUB estimator (:func:`ays.klub.interval_klub`) and every optimiser built on
it spend nearly all their time in denoiser calls. This module decides how those
calls are made; none of it changes *what* is estimated.

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

**Placement and precision** (:func:`prepare`). The denoiser runs on the device
of its parameters (or the one asked for) and in its own dtype (or the one asked
for: ``float16``/``bfloat16``); inputs are cast to that dtype and moved there, and
the output is cast back to the data's dtype. The noise level is handed over in at
least float32 (a float16 sigma would be rounded by up to 0.05 %). Schedule
arithmetic, proposal draws and KLUB accumulation stay float64 throughout.

**Memory** (:func:`batch_size_for`). A cap in bytes becomes a number of denoiser
rows per call. On CUDA the denoiser's own peak memory is measured on two probe
batches (its growth per row is the slope); on the CPU, where PyTorch keeps no
allocation statistics, it is estimated (see :func:`row_bytes`). With a cap the
draws stay in host memory and only micro-batches go to the device, so a model
that fits one batch can be run with any sample count.

Nothing here starts a process group by itself except :func:`init_from_env`,
which the command line calls when it was launched by ``torchrun``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .validate import AysError, check_steps

__all__ = [
    "ModelCall",
    "barrier",
    "batch_size_for",
    "check_output",
    "from_rank_zero",
    "gather_terms",
    "guard",
    "init_from_env",
    "is_distributed",
    "is_rank_zero",
    "launched_by_torchrun",
    "local_rank",
    "map_ordered",
    "map_shards",
    "model_device",
    "model_dtype",
    "parse_device",
    "parse_dtype",
    "parse_memory",
    "place_data",
    "prepare",
    "rank",
    "rank_zero_only",
    "row_bytes",
    "session",
    "shard",
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


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; True if one was joined.

    Backend: NCCL when CUDA is available, gloo otherwise (or ``backend``). With NCCL
    each process takes the GPU ``LOCAL_RANK``. Does nothing (False) outside
    ``torchrun`` or when a group is already initialised.
    """
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


@contextlib.contextmanager
def session(backend: str | None = None) -> Iterator[bool]:
    """``with session():`` joins the ``torchrun`` process group (if launched so) and leaves it at the end."""
    joined = init_from_env(backend)
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


# --------------------------------------------------------------------------
# Placement and precision
# --------------------------------------------------------------------------

_DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float16"``/``"fp16"``/``"half"``, ``"bfloat16"``/``"bf16"``, ``"float32"``, ``"float64"`` or a torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise AysError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise AysError(f"unknown dtype {dtype!r}; choose one of: float16, bfloat16, float32, float64")


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """A torch device from ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...; checks that it exists.

    Under ``torchrun`` a bare ``"cuda"`` means this process's GPU (``LOCAL_RANK``).
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AysError(f"unknown device {device!r}; e.g. cpu, cuda, cuda:1") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AysError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank() if launched_by_torchrun() else torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise AysError(f"device {str(dev)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise AysError("device 'mps' asked for, but MPS is not available on this machine")
    return dev


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from ``1000000``, ``"512MiB"``, ``"2GB"``, ``"1.5G"`` (K/M/G/T alone are binary)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AysError(f"max_memory must be a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        head = text.rstrip("kmgtib")
        number_text, unit = head, text[len(head):]
        try:
            number = float(number_text)
        except ValueError:
            number = math.nan
        if unit not in _UNITS or not math.isfinite(number):
            raise AysError(f"max_memory must be bytes like 2000000000, '512MiB' or '2GB', got {value!r}")
    else:
        raise AysError(f"max_memory must be a number of bytes, got {value!r}")
    out = number * _UNITS[unit]
    if not math.isfinite(out) or out < 1:
        raise AysError(f"max_memory must be a positive number of bytes, got {value!r}")
    return int(out)


def _modules(obj: Any, depth: int = 0) -> Iterator[torch.nn.Module]:
    """The ``nn.Module`` s behind a denoiser: itself, a partial's function, a bound method's owner, attributes."""
    if depth > 2:
        return
    if isinstance(obj, torch.nn.Module):
        yield obj
        return
    if isinstance(obj, ModelCall):
        yield from _modules(obj.denoiser, depth)
        return
    if isinstance(obj, functools.partial):
        yield from _modules(obj.func, depth + 1)
        yield from (v for v in (*obj.args, *obj.keywords.values()) if isinstance(v, torch.nn.Module))
        return
    owner = getattr(obj, "__self__", None)
    if owner is not None:
        yield from _modules(owner, depth + 1)
        return
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        for v in attrs.values():
            if isinstance(v, torch.nn.Module):
                yield v


def _parameters(denoiser: Any) -> Iterator[Tensor]:
    for mod in _modules(denoiser):
        yield from mod.parameters()
        yield from mod.buffers()


def model_device(denoiser: Any) -> torch.device | None:
    """The device of the denoiser's parameters (an ``nn.Module`` or an adapter holding one), else None."""
    for p in _parameters(denoiser):
        return p.device
    return None


def model_dtype(denoiser: Any) -> torch.dtype | None:
    """The floating dtype of the denoiser's parameters, else None."""
    for p in _parameters(denoiser):
        if p.is_floating_point():
            return p.dtype
    return None


class ModelCall:
    """A denoiser run on ``device`` in ``dtype``, answering in the caller's dtype and device, checked.

    ``ModelCall(denoiser)(x, sigma)`` casts ``x`` to ``dtype`` (if given) and moves it
    to ``device`` (if given), then hands ``sigma`` over there in the model's dtype but at least
    float32 (a float16 sigma is rounded by up to 0.05 %), casts the
    output back to ``x``'s dtype and device, and raises :class:`AysError` naming the
    noise level if the output holds NaN or inf or has the wrong shape.
    """

    def __init__(self, denoiser: Callable[..., Tensor], dtype: torch.dtype | None = None,
                 device: torch.device | None = None, what: str = "denoiser returned NaN or inf") -> None:
        self.denoiser = denoiser
        self.dtype = dtype
        self.device = device
        self.what = what

    def __repr__(self) -> str:
        return f"ModelCall({self.denoiser!r}, dtype={self.dtype}, device={self.device})"

    def __call__(self, x: Tensor, sigma: Tensor | float, **extra: Any) -> Tensor:
        xin = x
        if (self.dtype is not None and x.dtype != self.dtype) or (self.device is not None and x.device != self.device):
            xin = x.to(device=self.device or x.device, dtype=self.dtype or x.dtype)
        sig = sigma
        if isinstance(sigma, Tensor) and xin is not x:
            s_dtype = torch.promote_types(xin.dtype, torch.float32) if sigma.is_floating_point() else sigma.dtype
            sig = sigma.to(device=xin.device, dtype=s_dtype)
        out = self.denoiser(xin, sig, **extra)
        check_output(out, x, sigma, what=self.what)
        return out if xin is x else out.to(device=x.device, dtype=x.dtype)


def check_output(out: Any, x: Tensor, sigma: Tensor | float, what: str = "denoiser returned NaN or inf") -> None:
    """Raise :class:`AysError` unless ``out`` is a finite tensor of ``x``'s shape.

    A non-finite output is reported as ``"{what} at sigma=<the first bad row's level>"``.
    """
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise AysError(f"denoiser must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
    rows = out.reshape(out.shape[0], -1) if out.ndim > 0 else out.reshape(1, 1)
    bad = ~torch.isfinite(rows).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0])
        if isinstance(sigma, Tensor) and sigma.numel() > 1:
            level = float(sigma.reshape(-1)[i])
        else:
            level = float(sigma.reshape(-1)[0]) if isinstance(sigma, Tensor) else float(sigma)
        raise AysError(f"{what} at sigma={level:.6g}")


def guard(denoiser: Callable[..., Tensor], what: str = "denoiser returned NaN or inf") -> Callable[..., Tensor]:
    """The denoiser, with every output checked: NaN, inf or a wrong shape is an AysError naming sigma.

    ``what`` starts the message of a non-finite output (``"{what} at sigma=..."``).
    """
    if not callable(denoiser):
        raise AysError(f"denoiser must be callable denoiser(x, sigma), got {type(denoiser).__name__}")
    if isinstance(denoiser, ModelCall):
        return ModelCall(denoiser.denoiser, denoiser.dtype, denoiser.device, what=what)
    return ModelCall(denoiser, what=what)


def prepare(denoiser: Callable[..., Tensor], dtype: str | torch.dtype | None = None,
            device: str | torch.device | None = None) -> ModelCall:
    """The denoiser, run in ``dtype`` on ``device``; its output checked and cast back (:class:`ModelCall`).

    ``dtype``/``device`` ``None``: those of the denoiser's parameters (an
    ``nn.Module``, or an adapter or ``functools.partial`` holding one), else the
    input's. Given, and the denoiser holds modules, the modules are converted
    **in place** (``module.to(device, dtype)``, as ``model.half().cuda()`` would).
    """
    if not callable(denoiser):
        raise AysError(f"denoiser must be callable denoiser(x, sigma), got {type(denoiser).__name__}")
    dt = parse_dtype(dtype)
    dev = parse_device(device)
    mods = list(_modules(denoiser))
    for mod in mods:
        if dt is not None:
            mod.to(device=dev, dtype=dt)
        elif dev is not None:
            mod.to(device=dev)
    if dt is None:
        dt = model_dtype(denoiser)
    if dev is None:
        dev = model_device(denoiser)
    inner = denoiser.denoiser if isinstance(denoiser, ModelCall) else denoiser
    return ModelCall(inner, dt, dev)


def place_data(data: Any, device: torch.device | None) -> Any:
    """``data`` (a tensor, or ``data(n, generator)``) delivering its samples on ``device``.

    Randomness is unchanged: ays draws noise on the CPU and moves it to the data's
    device, so draws on any device are the same numbers.
    """
    if device is None:
        return data
    if isinstance(data, Tensor):
        return data.to(device)
    if callable(data):

        def on_device(n: int, generator: torch.Generator) -> Tensor:
            x = data(n, generator)
            return x.to(device) if isinstance(x, Tensor) else x

        return on_device
    return data


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------

#: On the CPU, a plain callable's working memory is taken as this many copies of its input.
CPU_CALLABLE_FACTOR = 4


def _estimate_state_bytes(numel: int, data_bytes: int, model_bytes: int) -> int:
    """Bytes per denoiser row of :func:`ays.klub.interval_klub`'s own working set.

    For a call of ``R`` rows (``R/2`` pairs), in units of one row of ``numel`` numbers:
    the gathered draws and their products, ``x_t`` and ``x_b`` and their concatenation
    (about 3R in the data's dtype), the cast input and the output (2R in the model's
    dtype), the output cast back and the difference of the halves (1.5R in the data's
    dtype), the float64 difference and its square (R float64 numbers).
    """
    return numel * ((9 * data_bytes) // 2 + 2 * model_bytes + 8)


def _leaf_output_bytes(module: torch.nn.Module, call: Callable[[], Any]) -> int:
    """Sum of the bytes of every leaf module's output during ``call()``: an upper bound of activations."""
    total = [0]

    def hook(_m: torch.nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            total[0] += out.numel() * out.element_size()
        elif isinstance(out, (tuple, list)):
            total[0] += sum(o.numel() * o.element_size() for o in out if isinstance(o, Tensor))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def row_bytes(denoiser: ModelCall, row: Tensor, sigma: float = 1.0) -> tuple[int, int]:
    """``(per_row, fixed)``: bytes one more denoiser row costs, and a per-call overhead.

    CUDA: the denoiser's peak memory above what is allocated, measured by
    ``torch.cuda.max_memory_allocated`` on probe batches of 1 and 3 rows (the slope
    is the cost per row, the intercept the overhead), plus the estimator's own
    working set (:func:`_estimate_state_bytes`). CPU (no allocator statistics):
    for an ``nn.Module``, the sum of every leaf module's output bytes on a one-row
    probe (every activation alive at once: an upper bound without autograd); for
    a plain callable, :data:`CPU_CALLABLE_FACTOR` copies of the row in the model's
    dtype; plus the estimator's working set.
    """
    dev = denoiser.device or row.device
    mdt = denoiser.dtype or row.dtype
    numel = row[0].numel()
    state = _estimate_state_bytes(numel, row.element_size(), torch.empty((), dtype=mdt).element_size())
    x1 = row[:1]
    if dev.type == "cuda":
        peaks = []
        for n in (1, 3):
            x = x1.expand(n, *x1.shape[1:]).contiguous()
            s = torch.full((n,), float(sigma), dtype=torch.float64)
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            with torch.no_grad():
                out = denoiser.denoiser(x.to(device=dev, dtype=mdt), s.to(dev, torch.promote_types(mdt, torch.float32)))
            del out
            torch.cuda.synchronize(dev)
            peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        slope = max(0.0, (peaks[1] - peaks[0]) / 2)
        fixed = max(0, int(peaks[0] - slope))
        return math.ceil(slope) + state, fixed
    mods = list(_modules(denoiser))
    row_model = numel * torch.empty((), dtype=mdt).element_size()
    if mods:
        s = torch.full((1,), float(sigma), dtype=torch.promote_types(mdt, torch.float32), device=dev)
        xin = x1.to(device=dev, dtype=mdt)
        with torch.no_grad():
            act = _leaf_output_bytes(mods[0], lambda: denoiser.denoiser(xin, s))
        return max(act, row_model) + state, 0
    return CPU_CALLABLE_FACTOR * row_model + state, 0


def batch_size_for(denoiser: ModelCall, row: Tensor, max_memory: int, sigma: float = 1.0,
                   batch_size: int | None = None) -> int:
    """The largest number of denoiser rows per call whose working memory stays within ``max_memory`` bytes.

    ``row`` is one clean sample ``[1, ...]`` (its shape and dtype are the state's).
    The result is even (rows come in pairs ``x_t``, ``x_b``), at least 2, and at
    most ``batch_size`` when that is given too. Raises :class:`AysError` when not
    even one pair fits.
    """
    if batch_size is not None:
        batch_size = check_steps(batch_size, name="batch_size", minimum=2)
    per_row, fixed = row_bytes(denoiser, row, sigma)
    rows = int((max_memory - fixed) // per_row) if max_memory > fixed else 0
    rows -= rows % 2
    if rows < 2:
        raise AysError(
            f"max_memory={max_memory:,} bytes cannot hold one pair of denoiser rows "
            f"(about {2 * per_row + fixed:,} bytes needed)"
        )
    return min(rows, batch_size) if batch_size is not None else rows
