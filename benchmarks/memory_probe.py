"""Peak memory of a CPU training run, counted from the allocator: the live bytes of tensor storage.

On a CPU there is no ``torch.cuda.max_memory_allocated``. Process RSS is no substitute: glibc keeps freed memory,
libraries and the interpreter come and go, and a 10 MB activation is lost in a 600 MB process. What a GPU peak
counts is the bytes of tensors alive at once; on the CPU the same number comes from PyTorch's CPU allocator, which
reports every allocation and free of tensor storage to the profiler while
``torch.profiler.profile(profile_memory=True)`` runs. `AllocationTrace` records those events and `replay` adds them
up in time order: the running sum of the blocks allocated inside the trace and not yet freed. A block allocated
before the trace and freed inside it is left out (the profiler does not know its size), so the sum starts at 0.

The profiler sees the threads it was started on (and the autograd engine's), not gloo's, which runs collectives
and frees what it was the last to hold. Two rules keep those frees where they belong:

- gloo's reduce-scatter clones its input (inside ``c10d::_reduce_scatter_base_``, on the calling thread) and drops
  the clone on its own thread or, later, with the ``Work``: a block allocated inside a ``c10d::`` operator is
  taken as freed when that operator returns. It is a staging copy NCCL does not make, not memory a model of FSDP2
  should count.
- `HeldCollectiveBuffers` keeps the tensors handed to a collective referenced until the next call of that
  collective (or the next phase of the step), so that the last reference to them is FSDP2's own, dropped on the
  profiled thread.

A block whose free is still unseen is taken as freed when its address is allocated again (``unseen_frees``).

`PeakMemory` is a Lightning callback: it traces from ``on_train_start`` to ``on_train_end`` and adds the bytes
of the module's parameters and buffers as they are at ``on_train_start`` (this rank's shards under FSDP2), the
only tensors a training step needs that were allocated before it. That is the number a memory model of one rank
predicts: parameters, gradients, optimizer state, activations, gathered and communication buffers, the loss's
temporaries. Outside it: the dataset and gloo's own ``malloc`` buffers. The phases of a step are marked with
``time.time_ns()``, the clock the profiler's timestamps are on (Unix nanoseconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn


@dataclass(frozen=True)
class Allocation:
    """One allocator event.

    Attributes:
        time_ns: when (Unix ns, the profiler's clock).
        ptr: the block's address.
        nbytes: its size; negative for a free.
        op: the operator it happened in (``aten::addmm``; ``""`` outside any).
        collective_end_ns: for an allocation inside a ``c10d::`` operator, when that operator returned.
    """

    time_ns: int
    ptr: int
    nbytes: int
    op: str = ""
    collective_end_ns: int | None = None


class AllocationTrace:
    """Every CPU tensor allocation and free between ``start()`` and ``stop()``, from ``torch.profiler``.

    Example:
        >>> trace = AllocationTrace()
        >>> trace.start()
        >>> x = torch.empty(1000)  # 4000 bytes
        >>> events = trace.stop()
        >>> max(live for _, live in replay(events).timeline)
        4000
    """

    def __init__(self) -> None:
        self._profiler: torch.profiler.profile | None = None

    def start(self) -> None:
        """Start recording (a profiler of CPU operators with ``profile_memory=True``)."""
        if self._profiler is not None:
            raise RuntimeError("AllocationTrace: start() was called twice")
        self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()

    def stop(self) -> list[Allocation]:
        """Stop recording; the CPU allocations and frees it saw, in time order."""
        if self._profiler is None:
            raise RuntimeError("AllocationTrace: stop() without start()")
        from torch._C._profiler import _EventType

        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        assert profiler.profiler is not None and profiler.profiler.kineto_results is not None
        events: list[Allocation] = []
        roots = profiler.profiler.kineto_results.experimental_event_tree()
        pending: list[tuple[Any, str, int | None]] = [(node, "", None) for node in roots]
        while pending:
            node, op, collective_end = pending.pop()
            if node.tag == _EventType.Allocation:
                fields = node.extra_fields
                if fields.device.type == "cpu":
                    events.append(Allocation(node.start_time_ns, fields.ptr, fields.alloc_size, op, collective_end))
                continue
            if collective_end is None and node.name.startswith("c10d::"):
                collective_end = node.end_time_ns
            pending.extend((child, node.name, collective_end) for child in node.children)
        events.sort(key=lambda e: e.time_ns)
        return events


@dataclass
class Replay:
    """The live bytes of a trace, event by event (see `replay`).

    Attributes:
        timeline: ``(time_ns, live bytes)`` after each event.
        peak_blocks: the blocks alive at the peak, ``{(operator, block bytes): count}``.
        unseen_frees: blocks whose free the profiler did not see (freed on another thread), each taken as freed
            when its address was allocated again.
    """

    timeline: list[tuple[int, int]]
    peak_blocks: dict[tuple[str, int], int]
    unseen_frees: int


def replay(events: list[Allocation]) -> Replay:
    """Add up allocator events in time order: the bytes of the blocks allocated in the trace and not yet freed.

    A block allocated inside a ``c10d::`` operator (gloo's staging copy) is taken as freed when that operator
    returns, whenever its free comes. A free of a block allocated before the trace is ignored.
    """
    staged = [Allocation(e.collective_end_ns, e.ptr, -e.nbytes)
              for e in events if e.nbytes > 0 and e.collective_end_ns is not None]
    blocks: dict[int, Allocation] = {}
    live = peak = unseen = 0
    timeline: list[tuple[int, int]] = []
    snapshot: list[Allocation] = []
    for event in sorted(events + staged, key=lambda e: e.time_ns):
        if event.nbytes > 0:
            stale = blocks.pop(event.ptr, None)
            if stale is not None:  # allocated again: the old block was freed where the profiler did not look
                live -= stale.nbytes
                unseen += 1
            blocks[event.ptr] = event
            live += event.nbytes
        elif event.ptr in blocks:  # else: allocated before the trace (size unknown), or a staging copy let go
            live -= blocks.pop(event.ptr).nbytes
        timeline.append((event.time_ns, live))
        if live > peak:
            peak, snapshot = live, list(blocks.values())
    counts: dict[tuple[str, int], int] = {}
    for block in snapshot:
        counts[block.op, block.nbytes] = counts.get((block.op, block.nbytes), 0) + 1
    return Replay(timeline, counts, unseen)


class HeldCollectiveBuffers:
    """While installed, the tensors handed to a collective stay referenced until the next call of the same
    collective (or the next phase of the step).

    gloo runs a collective on a thread of its own, which drops its references to the tensors when it has finished.
    When the caller (FSDP2) has dropped its own first, the block is freed on gloo's thread, where the profiler sees
    no free. Held here, the last reference is FSDP2's, dropped on the profiled thread, at the time FSDP2 drops it:
    FSDP2 keeps an all-gather's output until its copy-out, after which it starts the next all-gather, and a
    reduce-scatter's input until the next reduce-scatter. ``release`` lets them go at every phase of the step
    (without sharding the forward has no collective at all).
    """

    NAMES = ("all_gather_single", "reduce_scatter_single", "all_gather_into_tensor", "reduce_scatter_tensor",
             "all_reduce")
    """The ``torch.distributed`` functions wrapped (FSDP2's and HSDP's collectives)."""

    def __init__(self) -> None:
        self._originals: dict[str, Any] = {}
        self._held: dict[str, tuple[Any, ...]] = {}

    def install(self) -> None:
        """Wrap the collectives (again: nothing more)."""
        import torch.distributed as dist

        for name in self.NAMES:
            if name in self._originals:
                continue
            original = self._originals[name] = getattr(dist, name)

            def held(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                self._held.pop(_name, None)  # the previous call's tensors, unless their caller still holds them
                result = _original(*args, **kwargs)
                self._held[_name] = (args, kwargs)
                return result

            setattr(dist, name, held)

    def release(self) -> None:
        """Let every collective's tensors go now (on this thread)."""
        self._held.clear()

    def uninstall(self) -> None:
        """Put the collectives back and let the last tensors go."""
        import torch.distributed as dist

        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals.clear()
        self._held.clear()


def module_state_bytes(module: nn.Module) -> int:
    """Bytes of the storages behind ``module``'s parameters and buffers (this rank's shards of DTensors; a
    storage shared by several tensors, FSDP2's padded shard or a tied weight, counted once)."""
    storages: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        if storage.nbytes():
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@dataclass
class PeakMemory(pl.Callback):
    """Peak live tensor bytes of this rank during training (a Lightning callback), and where in the step it was.

    After ``fit``:

    - ``peak_bytes``: module state at ``on_train_start`` + the peak of the trace;
    - ``state_bytes``: that module state;
    - ``peak_phase``: ``"step 2 backward"``: the step and its phase (``forward`` runs from the batch's start to
      ``on_before_backward``, so it holds Lightning's ``zero_grad``; ``optimizer`` from
      ``on_before_optimizer_step``);
    - ``phase_peaks``: the peak of every phase of every step, bytes above ``state_bytes``;
    - ``peak_blocks``: what was alive at the peak, largest first: ``(operator that allocated it, bytes, count)``;
    - ``unseen_frees``: see `Replay`.
    """

    state_bytes: int = 0
    peak_bytes: int = 0
    peak_phase: str = ""
    phase_peaks: dict[str, int] = field(default_factory=dict)
    peak_blocks: list[tuple[str, int, int]] = field(default_factory=list)
    unseen_frees: int = 0
    _trace: AllocationTrace = field(default_factory=AllocationTrace)
    _held: HeldCollectiveBuffers = field(default_factory=HeldCollectiveBuffers)
    _marks: list[tuple[int, str]] = field(default_factory=list)
    _step: int = 0

    def _mark(self, phase: str) -> None:
        self._held.release()  # a step's phases start after its collectives (none in forward without sharding)
        self._marks.append((time.time_ns(), f"step {self._step} {phase}"))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state_bytes = module_state_bytes(pl_module)
        self._held.install()
        self._trace.start()
        self._mark("start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self._step += 1
        self._mark("forward")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._mark("backward")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._mark("optimizer")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           i: int) -> None:
        self._mark("end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        replayed = replay(self._trace.stop())
        self._held.uninstall()
        self.unseen_frees = replayed.unseen_frees
        marks = iter(self._marks)
        phase, upcoming = "before", next(marks, None)
        for time_ns, live in replayed.timeline:
            while upcoming is not None and upcoming[0] <= time_ns:
                phase, upcoming = upcoming[1], next(marks, None)
            self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), live)
        peak = max(self.phase_peaks.values(), default=0)
        self.peak_phase = next((p for p, v in self.phase_peaks.items() if v == peak), "")
        self.peak_bytes = self.state_bytes + peak
        self.peak_blocks = sorted(((op, size, n) for (op, size), n in replayed.peak_blocks.items()),
                                  key=lambda b: -b[1] * b[2])
