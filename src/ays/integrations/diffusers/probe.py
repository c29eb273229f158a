"""The scheduler that ays puts in a pipeline's loop, and the suspended ``__call__`` it serves (:mod:`.route`).

:class:`ProbeScheduler` stands in for the pipeline's scheduler: its ``timesteps`` are the level
of the request at hand, its ``step`` hands the pipeline's guided network output over and returns
the latents of the next request. A :class:`Server` is one ``pipe(...)`` suspended in its own
thread inside that ``step``; only one thread runs at a time (the caller waits on the answer),
so the pipeline's per-call state is swapped in and out around each wait.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...validate import AysError

__all__ = ["ProbeScheduler", "Request", "RowTimes", "Server", "Stop", "close_all"]

Tensor = torch.Tensor


class Stop(BaseException):
    """Raised inside a pipeline's ``__call__`` to end it (a server closed, a schedule recorded)."""


class _StepOutput(tuple):
    """``step``'s result read either way: ``[0]`` (``return_dict=False``) or ``.prev_sample``."""

    @property
    def prev_sample(self) -> Tensor:
        return self[0]


class _Levels(Sequence):
    """``scheduler.timesteps`` / ``.sigmas`` of the probe: whatever the calling thread's server asks next."""

    def __init__(self, probe: ProbeScheduler, which: str) -> None:
        self.probe, self.which = probe, which

    def __len__(self) -> int:
        return 10**9  # the loop runs until ays closes it

    def __getitem__(self, i: Any) -> Tensor:
        return self.probe.server().level(self.which)

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.probe.server().level(self.which)


class ProbeScheduler:
    """A scheduler that hands the pipeline's guided network output to ays and steps to where ays asks.

    Reads of anything else (``config``, ``num_train_timesteps``, ...) go to the original scheduler.
    """

    order = 1
    init_noise_sigma = 1.0
    step_index = None
    begin_index = None

    def __init__(self, original: Any) -> None:
        self.original = original
        self.servers: dict[int, Server] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "original":
            raise AttributeError(name)
        return getattr(self.original, name)

    @property
    def config(self) -> Any:
        return self.original.config

    def server(self) -> Server:
        return self.servers[threading.get_ident()]

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, timesteps: Any = None,
                      sigmas: Any = None, mu: float | None = None, **kwargs: Any) -> None:
        """The levels are ays' requests: nothing to set."""

    @property
    def timesteps(self) -> _Levels:
        return _Levels(self, "timestep")

    @property
    def sigmas(self) -> _Levels:
        return _Levels(self, "sigma")

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The probe has no position in a schedule."""

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return sample  # the latents already are the network's input x_model = alpha(σ)·x

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, *args: Any, return_dict: bool = True,
             **kwargs: Any) -> _StepOutput:
        nxt = self.server().hand_over(model_output)
        return _StepOutput((nxt.to(device=sample.device, dtype=sample.dtype),))


class RowTimes(torch.Tensor):
    """The timesteps of a step whose rows sit at different levels: ``[m]`` values, one per row.

    Pipelines broadcast their step's ``t`` over the network batch with ``t.expand(n)``; with
    guidance the batch is ``[uncond; cond]``, ``n = k·m``, and the expansion tiles the rows'
    values ``k`` times (``repeat``), so each row of each branch keeps its own level. Type
    conversions keep the kind; anything else computes on plain tensors (and a pipeline that
    needs one number, ``float(t)``, fails loudly: the route then serves such rows in groups).
    """

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is Tensor.expand and isinstance(args[0], RowTimes):
            size = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
            rows = int(args[0].shape[0])
            if len(size) == 1 and int(size[0]) % rows == 0:
                return args[0].as_subclass(Tensor).repeat(int(size[0]) // rows).as_subclass(RowTimes)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        keep = func in (Tensor.to, Tensor.float, Tensor.half, Tensor.type_as, Tensor.__getitem__)
        return out.as_subclass(RowTimes) if keep and isinstance(out, Tensor) and out.ndim == 1 else out


@dataclass
class Request:
    x: Tensor
    timestep: float | Tensor  # one level, or RowTimes of the rows
    sigma: float


class Server:
    """One suspended ``pipe(**kwargs)``: ``m`` rows of one condition, evaluated one request at a time."""

    def __init__(self, pipe: Any, probe: ProbeScheduler, device: torch.device, kwargs: dict[str, Any]) -> None:
        self.pipe, self.probe, self.device, self.kwargs = pipe, probe, device, kwargs
        self.requests: queue.Queue[Request | None] = queue.Queue()
        self.results: queue.Queue[Any] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.current: Request | None = None

    def level(self, which: str) -> Tensor:
        assert self.current is not None
        value = self.current.timestep if which == "timestep" else self.current.sigma
        if isinstance(value, Tensor):
            return value
        return torch.tensor(value, dtype=torch.float32, device=self.device)

    def hand_over(self, output: Tensor) -> Tensor:
        """In the pipeline's thread: give ays the output, wait for the next request.

        The pipeline keeps per-call state on itself (``self._guidance_scale``: SVD's is one row per
        video): it is saved while this call waits and restored when it resumes, as other servers'
        calls of the same pipeline run in between.
        """
        pipe = self.pipe
        state = {k: v for k, v in vars(pipe).items() if k.startswith("_") and k != "_internal_dict"}
        self.results.put(output)
        nxt = self.requests.get()
        if nxt is None:
            raise Stop
        vars(pipe).update(state)
        self.current = nxt
        return nxt.x

    def _run(self, first: Request) -> None:
        self.probe.servers[threading.get_ident()] = self
        self.current = first
        try:
            self.pipe(**self.kwargs, latents=first.x)
            self.results.put(AysError(f"{type(self.pipe).__name__} returned without stepping its scheduler "
                                      "at the requested level: the route needs a loop that calls scheduler.step"))
        except Stop:
            pass
        except torch.cuda.OutOfMemoryError as e:  # for the caller's back-off to fewer rows (ays.device.ModelCall)
            self.results.put(e)
        except Exception as e:  # the pipeline's own error, reported to the caller in one line
            self.results.put(AysError(f"{type(self.pipe).__name__} failed under the route: "
                                      f"{type(e).__name__}: {e}".splitlines()[0]))
        finally:
            self.probe.servers.pop(threading.get_ident(), None)

    def evaluate(self, request: Request) -> Tensor:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, args=(request,), daemon=True)
            self.thread.start()
        else:
            self.requests.put(request)
        out = self.results.get()
        if isinstance(out, (AysError, torch.cuda.OutOfMemoryError)):
            self.thread.join()
            self.thread = None
            raise out
        return out

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.requests.put(None)
            self.thread.join(timeout=10)
        self.thread = None


def close_all(servers: dict[Any, Server]) -> None:
    for server in servers.values():
        server.close()
    servers.clear()


