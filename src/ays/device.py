"""The model's device, dtype, finite-output guard and memory cap: how one denoiser call is made.

**Placement and precision** (:func:`prepare`). The denoiser runs on the device
of its parameters (or the one asked for) and in its own dtype (or the one asked
for: ``float16``/``bfloat16``); inputs are cast to that dtype and moved there, and
the output is cast back to the data's dtype. The noise level is handed over in at
least float32 (a float16 sigma would be rounded by up to 0.05 %). Schedule
arithmetic, proposal draws and KLUB accumulation stay float64 throughout.

**A finite output** (:func:`guard`, :func:`check_output`): a NaN or inf from the denoiser is
raised where it arose, with the noise level that caused it, instead of spreading into a
schedule or a KLUB.

**Memory** (:func:`batch_size_for`). A cap in bytes becomes a number of denoiser
rows per call. On CUDA the denoiser's own peak memory is measured on two probe
batches (its growth per row is the slope); on the CPU, where PyTorch keeps no
allocation statistics, it is estimated (see :func:`row_bytes`). With a cap the
draws stay in host memory and only micro-batches go to the device, so a model
that fits one batch can be run with any sample count.

Which process makes which calls is :mod:`ays.distributed`.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .data import Conditioned, as_conditioned, to
from .distributed import launched_by_torchrun, local_rank
from .validate import AysError, check_steps

__all__ = [
    "CPU_BATCH_ROWS",
    "ModelCall",
    "batch_size_for",
    "check_output",
    "guard",
    "model_device",
    "model_dtype",
    "parse_device",
    "parse_dtype",
    "parse_memory",
    "place_data",
    "prepare",
    "row_bytes",
]

Tensor = torch.Tensor

_DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}  # fmt: skip


#: Rows per model call of an image model on the CPU (benchmarks/unet_cpu.py; see :class:`ModelCall`).
CPU_BATCH_ROWS = 32


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
        #: rows per model call after a CUDA out-of-memory error (None: never ran out)
        self.max_rows: int | None = None
        #: denoiser rows evaluated so far by this process: the cost unit, one row = one denoiser call
        self.rows = 0
        #: ``listener(rows)`` after every call that succeeded (the progress meter of :mod:`ays.optimize.stages`)
        self.listener: Callable[[int], None] | None = None

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
        out = self._rows(xin, sig, extra)
        check_output(out, x, sigma, what=self.what)
        self.rows += x.shape[0]
        if self.listener is not None:
            self.listener(x.shape[0])
        return out if xin is x else out.to(device=x.device, dtype=x.dtype)

    def _rows(self, x: Tensor, sigma: Tensor | float, extra: dict[str, Any]) -> Tensor:
        """The model on these rows; on a CUDA out-of-memory error, on halves of them, down to one row.

        The batch that worked is kept in :attr:`max_rows` (later calls start there) and
        reported once on stderr. Rows are independent for a denoiser, so the result is the
        same as one call would have given.
        """
        n = x.shape[0]
        if self.max_rows is not None and n > self.max_rows:
            step = self.max_rows  # fixed for this split, even if a part lowers max_rows again
            return torch.cat([self._rows(*_row_slice(x, sigma, extra, a, a + step)) for a in range(0, n, step)])
        try:
            return self.denoiser(x, sigma, **extra)
        except torch.cuda.OutOfMemoryError:
            if n == 1:
                raise AysError("the denoiser runs out of GPU memory on a single row; use a smaller model or "
                               "--dtype float16/bfloat16") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.max_rows = n // 2
            print(f"ays: CUDA out of memory at {n} rows per call; continuing with {self.max_rows}",
                  file=sys.stderr)
            return self._rows(x, sigma, extra)


def _row_slice(x: Tensor, sigma: Tensor | float, extra: dict[str, Any], a: int, b: int
               ) -> tuple[Tensor, Tensor | float, dict[str, Any]]:
    """Rows ``a:b`` of the input, its noise levels and its per-row conditioning."""
    n = x.shape[0]
    rows = lambda v: v[a:b] if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n else v
    return x[a:b], rows(sigma), {k: rows(v) for k, v in extra.items()}


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
    """``data`` (a tensor, ``data(n, generator)``, either with conditioning) delivering its samples on ``device``.

    Randomness is unchanged: ays draws noise on the CPU and moves it to the data's
    device, so draws on any device are the same numbers.
    """
    if device is None:
        return data

    def moved(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.to(device)
        pair = as_conditioned(value)  # rows and their conditioning move together
        return value if pair is None else Conditioned(pair.x.to(device), to(pair.cond, device))

    if isinstance(data, Tensor) or as_conditioned(data) is not None:
        return moved(data)
    if callable(data):

        def on_device(n: int, generator: torch.Generator) -> Any:
            return moved(data(n, generator))

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
