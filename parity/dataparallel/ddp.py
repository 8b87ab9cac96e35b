"""Data-parallel training of the torch twin on torch's own engine: ``DistributedDataParallel`` over
``torch.distributed`` (gloo on CPU, NCCL on GPU with one GPU per rank), N processes started by
``torch.multiprocessing``; each rank normalises its own shard (or, with SyncBatchNorm, the global
batch), DDP averages the gradients and broadcasts rank 0's buffers at every forward. Every
collective and every process has a timeout (docs/dataparallel.md).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from parity import training

if TYPE_CHECKING:
    import torch

Batches = list[tuple[np.ndarray, np.ndarray]]  # global batches (x NCHW, labels)
Run = dict[str, dict[str, np.ndarray]]  # "step1", "final", "losses" -> torch key -> float64 array
StepHook = Callable[[int, int], None]  # (rank, step) at the start of each step: the tests' seam for faults


def record(out: Run, step: int, steps: int, state: dict[str, np.ndarray]) -> None:
    """Keep ``state`` as the run's "step1" after the first step and its "final" after the last (both
    for a one-step run)."""
    if step == 0:
        out["step1"] = state
    if step == steps - 1:
        out["final"] = state


def free_port() -> int:
    """A TCP port no one listens on now (picked, not fixed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend(device: str) -> str:
    """torch.distributed's backend for ``device``: NCCL on GPU, gloo on CPU."""
    return "nccl" if device == "gpu" else "gloo"


def rank_device(device: str, rank: int) -> torch.device:
    """Rank ``rank``'s device, made current on GPU (NCCL needs each rank on its own GPU)."""
    import torch

    dev = training.torch_device(device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


@dataclass(frozen=True)
class DDPJob:
    name: str
    weights: Mapping[str, torch.Tensor]
    batches: Batches  # rank r takes rows [r * b, (r + 1) * b) of each
    opt: training.Optimizer
    dtype: str
    world: int
    port: int
    out: str  # where rank 0 writes the result (atomically)
    timeout_s: float
    device: str = "cpu"
    precision: str = "highest"
    sync_bn: bool = False  # SyncBatchNorm: every rank normalises with the global batch's statistics
    hook: StepHook | None = None  # a module-level function (ranks are spawned: it must pickle)


def _ddp_worker(rank: int, job: DDPJob) -> None:
    """One DDP rank: ``len(job.batches)`` steps on its shard; rank 0 writes the result."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from parity.precision import torch_precision

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.world))
    dev = rank_device(job.device, rank)
    dist.init_process_group(backend(job.device), init_method=f"tcp://127.0.0.1:{job.port}", rank=rank,
                            world_size=job.world, timeout=timedelta(seconds=job.timeout_s))
    try:
        model = training.torch_model(job.name, job.weights, job.dtype, **training.overrides(job.name)).to(dev)
        if job.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = training.torch_optimizer(job.opt, ddp.parameters())
        losses, out = [], {}
        with torch_precision(job.device, job.precision):
            for i, (x, y) in enumerate(job.batches):
                if job.hook is not None:
                    job.hook(rank, i)
                # progress: a rank that hangs leaves the others waiting in a collective of a later step
                progress(job.out, rank, i)
                b = len(y) // job.world
                xs = training.torch_inputs(x[rank * b:(rank + 1) * b], job.dtype).to(dev)
                ys = torch.from_numpy(y[rank * b:(rank + 1) * b]).to(dev)
                loss, _ = training.torch_train_step(ddp, opt, xs, ys, job.dtype)
                mean = loss.detach().clone()
                dist.all_reduce(mean)  # the mean of the ranks' losses, as JAX's pmean
                losses.append(float(mean) / job.world)
                if i == 0 or i == len(job.batches) - 1:
                    record(out, i, len(job.batches), {k: v.detach().cpu().double().numpy().copy()
                                                      for k, v in model.state_dict().items() if "num_batches" not in k})
        if rank == 0:
            out["losses"] = {"loss": np.array(losses)}
            tmp = Path(job.out).with_suffix(".tmp")
            torch.save(out, tmp)
            os.replace(tmp, job.out)  # one process writes, atomically
        del ddp, opt
        finish_ranks()
    finally:
        dist.destroy_process_group()


def finish_ranks() -> None:
    """The end of a rank's work: every rank waits for the others (no rank tears the process group down
    under one still in a collective), and DDP objects left in reference cycles are freed now, while
    their process group exists, not at interpreter exit (docs/dataparallel.md, "Ending ranks")."""
    import gc

    import torch.distributed as dist

    dist.barrier()
    gc.collect()


def launch(fn: Callable[[int, Any], None], job: Any, world: int, timeout_s: float, what: str) -> None:
    """``fn(rank, job)`` in ``world`` spawned processes. Ends within ``timeout_s`` (plus start-up)
    whatever a rank does: a rank that exits or raises ends the run with an error naming it (and the
    ranks that fell behind, when ``job.out``'s folder holds their progress), one that never finishes
    with a TimeoutError naming it; no process is left behind."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    ctx = mp.start_processes(fn, args=(job,), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s + 60  # start-up: each rank imports torch
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                alive = [r for r, p in enumerate(ctx.processes) if p.is_alive()]
                raise TimeoutError(f"{what}: rank(s) {alive} still running after {timeout_s + 60:.0f} s; "
                                   "all ranks stopped")
    except ProcessException as e:
        raise RuntimeError(f"{what}: rank {e.error_index} failed{_behind(job.out, world)}: {e}") from None
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)


def torch_ddp(name: str, weights: Mapping[str, torch.Tensor], batches: Batches, opt: training.Optimizer,
              dtype: str, world: int, timeout_s: float = 120.0, device: str = "cpu", precision: str = "highest",
              sync_bn: bool = False, hook: StepHook | None = None) -> Run:
    """``len(batches)`` DDP steps over ``world`` processes (``launch``); rank 0's result, as
    ``parity.dataparallel.meshes.jax_train``'s. ``hook(rank, step)`` runs in each rank before each step."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        job = DDPJob(name, OrderedDict((k, v.detach().cpu()) for k, v in weights.items()), batches, opt, dtype,
                     world, free_port(), str(Path(tmp) / "rank0.pt"), timeout_s, device, precision, sync_bn, hook)
        launch(_ddp_worker, job, world, timeout_s, f"DDP run of {name}")
        return torch.load(job.out, weights_only=False)  # our own file, written by rank 0 just now


def progress(out: str, rank: int, step: int) -> None:
    """Rank ``rank`` reached ``step`` (read by ``launch`` to name a rank that hangs)."""
    Path(out).with_name(f"rank{rank}.step").write_text(str(step))


def _behind(out: str, world: int) -> str:
    """Which ranks fell behind the others (a rank that hangs makes the others time out waiting)."""
    steps = {}
    for r in range(world):
        f = Path(out).with_name(f"rank{r}.step")
        steps[r] = int(f.read_text()) if f.exists() else -1
    last = max(steps.values())
    behind = [r for r, s in steps.items() if s < last]
    return f" (rank(s) {behind} fell behind: last seen at step {min(steps.values())}, others at {last})" \
        if behind else ""


def torch_replica_reference(name: str, weights: Mapping[str, torch.Tensor], batches: Batches,
                            opt: training.Optimizer, dtype: str, world: int) -> Run:
    """One process doing what DDP does: each shard normalised on its own, the loss the mean of the
    shards' losses (so the gradient is DDP's average), running statistics rank 0's."""
    import torch

    model = training.torch_model(name, weights, dtype, **training.overrides(name))
    sharded = _sharded(model, world)
    optimizer = training.torch_optimizer(opt, model.parameters())
    losses, out = [], {}
    for i, (x, y) in enumerate(batches):
        loss, _ = training.torch_train_step(sharded, optimizer, training.torch_inputs(x, dtype), torch.from_numpy(y),
                                            dtype)
        losses.append(float(loss.detach()))
        if i == 0 or i == len(batches) - 1:
            record(out, i, len(batches), {k: v.detach().double().numpy().copy()
                                          for k, v in model.state_dict().items() if "num_batches" not in k})
    out["losses"] = {"loss": np.array(losses)}
    return out


def _sharded(model: torch.nn.Module, world: int) -> torch.nn.Module:
    """``model`` on each of ``world`` equal shards of the batch in turn, as a torch module; the buffers
    kept are those after shard 0 (rank 0's). The class is made here because torch is imported lazily."""
    import torch

    class Shards(torch.nn.Module):
        def __init__(self, model: torch.nn.Module, world: int):
            super().__init__()
            self.model, self.world = model, world

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs, kept = [], None
            for part in x.chunk(self.world):
                outs.append(self.model(part))
                if kept is None:
                    kept = {k: b.detach().clone() for k, b in self.model.named_buffers()}
            # new tensors, not copy_: the forward passes saved the old ones for backward
            for k, b in kept.items():
                owner, _, leaf = k.rpartition(".")
                setattr(self.model.get_submodule(owner), leaf, b)
            return torch.cat(outs)

    return Shards(model, world)
