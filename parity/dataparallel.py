"""Data-parallel training of both twins on the frameworks' own engines, and its parity
(docs/dataparallel.md).

JAX, one ``Mesh`` over N devices with a ``data`` axis:
- ``jax_global_step``: ``jax.jit`` with the batch sharded and the state replicated. A mean over the
  batch is then a global mean (XLA inserts the all-reduces), so BatchNorm normalises with the
  global batch's statistics: the single-device step on the global batch.
- ``jax_replica_step``: ``jax.shard_map``. Each replica normalises its own shard, the gradients and
  the loss are averaged (``pmean``) and the running statistics kept are replica 0's: DDP's semantics.

torch: ``DistributedDataParallel`` over ``torch.distributed`` (gloo on CPU, NCCL on GPU), N processes
started by ``torch.multiprocessing``; each rank normalises its own shard, DDP averages the gradients
and broadcasts rank 0's buffers at every forward. Every collective and every process has a timeout.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity import training

AXIS = "data"


# --------------------------------------------------------------------------- JAX


def jax_mesh(devices: int) -> Any:
    """A one-axis mesh over the first ``devices`` devices; a clear error when there are fewer (on CPU,
    JAX_NUM_CPU_DEVICES=N, or jax.config.update('jax_num_cpu_devices', N) before JAX starts)."""
    import jax
    from jax.sharding import Mesh

    have = jax.devices()
    if len(have) < devices:
        raise RuntimeError(f"{devices} devices asked for, JAX has {len(have)} ({have[0].platform}); on CPU set "
                           f"JAX_NUM_CPU_DEVICES={devices} before JAX starts")
    return Mesh(np.array(have[:devices]), (AXIS,))


def shard(x: Any, mesh: Any) -> Any:
    """``x`` split over the mesh's data axis along its first dimension."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(AXIS)))


def replicate(tree: Any, mesh: Any) -> Any:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def jax_global_step(model: Any, tx: Any, mesh: Any, donate: bool = False) -> Callable:
    """``step(state, x, labels) -> (state, loss, logits)`` with global BatchNorm statistics."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    step = training.flax_train_step(model, tx)
    rep, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(AXIS))

    def run(state, x, labels):
        state, out = step(state, x, labels)
        return state, out.loss, out.logits

    return jax.jit(run, in_shardings=(rep, data, data), out_shardings=(rep, rep, data),
                   donate_argnums=0 if donate else ())


def _replica_0(tree: Any) -> Any:
    """Replica 0's value on every replica (what DDP's buffer broadcast keeps)."""
    import jax
    import jax.numpy as jnp

    first = jax.lax.axis_index(AXIS) == 0
    return jax.tree_util.tree_map(lambda s: jax.lax.psum(jnp.where(first, s, jnp.zeros_like(s)), AXIS), tree)


def jax_replica_step(model: Any, tx: Any, mesh: Any, donate: bool = False) -> Callable:
    """``step(state, x, labels) -> (state, loss, logits)`` with per-replica BatchNorm statistics."""
    import jax
    from jax.sharding import PartitionSpec as P

    def across(loss, grads, stats):
        return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grads, AXIS), _replica_0(stats)

    step = training.flax_train_step(model, tx, across=across)

    def run(state, x, labels):
        state, out = step(state, x, labels)
        return state, out.loss, out.logits

    # check_vma off: the gradient of the replicated parameters is then each replica's own (with it on,
    # JAX sums it over replicas itself, which ``across`` would average a second time)
    return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(), P(), P(AXIS)),
                                 check_vma=False), donate_argnums=0 if donate else ())


def jax_train(name: str, weights: Mapping[str, Any], batches: list, opt: training.Optimizer, dtype: str,
              mode: str, devices: int) -> dict:
    """``len(batches)`` steps of the Flax twin: ``mode`` "single" (one device), "global" or "replica"
    (``devices`` devices). Returns per-step losses and the parameters and statistics after step 1
    and after the last step, float64 numpy in torch's layout."""
    import jax
    import jax.numpy as jnp

    from parity import convert

    ov = training.overrides(name)
    with jax.enable_x64(dtype == "fp64"):
        model = training.flax_model(name, dtype, **ov)
        tx = training.optax_optimizer(opt)
        state = training.flax_state(training.flax_variables(name, weights, dtype, **ov), tx)
        # the state is donated: one copy of the parameters and optimizer state per device, not two
        # (vgg11_bn in float64: 2.1 GB each)
        if mode == "single":
            step = jax.jit(lambda s, x, y: _out(training.flax_train_step(model, tx)(s, x, y)), donate_argnums=0)
            put = lambda a: a  # noqa: E731
        else:
            mesh = jax_mesh(devices)
            step = (jax_global_step if mode == "global" else jax_replica_step)(model, tx, mesh, donate=True)
            put, state = (lambda a: shard(a, mesh)), replicate(state, mesh)
        losses, out = [], {}
        for i, (x, y) in enumerate(batches):
            state, loss, _ = step(state, put(training.flax_inputs(x, dtype)), put(jnp.asarray(y)))
            losses.append(float(loss))
            if i == 0 or i == len(batches) - 1:
                sd = convert.flax_to_torch(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
                                           name, **ov)
                out["step1" if i == 0 else "final"] = {k: v.double().numpy() for k, v in sd.items()
                                                       if "num_batches" not in k}
    out["losses"] = {"loss": np.array(losses)}
    return out


def _out(result: Any) -> tuple:
    state, step = result
    return state, step.loss, step.logits


def jax_multiprocess(name: str, weights: Mapping[str, Any], batches: list, opt: training.Optimizer, dtype: str,
                     processes: int, mode: str = "global", timeout_s: float = 300.0) -> dict:
    """``jax_train`` over ``processes`` processes (one CPU device each) joined by ``jax.distributed``
    (gloo collectives on CPU); process 0's result. A process that fails or outlives ``timeout_s``
    ends the run with an error naming it; all are stopped."""
    import pickle
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.pkl"
        job.write_bytes(pickle.dumps({"name": name, "weights": OrderedDict((k, v.detach().cpu().numpy())
                                                                             for k, v in weights.items()),
                                      "batches": batches, "opt": opt, "dtype": dtype, "mode": mode,
                                      "processes": processes, "port": free_port(), "out": str(Path(tmp) / "p0.pkl"),
                                      "timeout_s": timeout_s}))
        env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES",)}
        procs = [subprocess.Popen([sys.executable, "-m", "parity.dataparallel", str(job), str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(processes)]
        deadline = time.monotonic() + timeout_s + 60
        try:
            while any(p.poll() is None for p in procs):
                bad = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
                if bad:
                    i = bad[0]
                    raise RuntimeError(f"jax.distributed run of {name}: process {i} exited with code "
                                       f"{procs[i].returncode}: {procs[i].stdout.read()[-2000:]}")
                if time.monotonic() > deadline:
                    alive = [i for i, p in enumerate(procs) if p.poll() is None]
                    raise TimeoutError(f"jax.distributed run of {name}: process(es) {alive} still running after "
                                       f"{timeout_s + 60:.0f} s; all stopped")
                time.sleep(0.5)
            bad = [i for i, p in enumerate(procs) if p.returncode != 0]
            if bad:
                raise RuntimeError(f"jax.distributed run of {name}: process {bad[0]} exited with code "
                                   f"{procs[bad[0]].returncode}: {procs[bad[0]].stdout.read()[-2000:]}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)
        return pickle.loads(Path(tmp, "p0.pkl").read_bytes())


def _jax_process(job_path: str, process_id: int) -> None:
    """One ``jax_multiprocess`` process: join, train on its rows of each global batch, process 0 writes."""
    import pickle

    import jax
    import torch
    from jax.sharding import NamedSharding, PartitionSpec

    from parity import convert

    job = pickle.loads(Path(job_path).read_bytes())
    jax.config.update("jax_enable_x64", job["dtype"] == "fp64")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{job['port']}", num_processes=job["processes"],
                               process_id=process_id, initialization_timeout=int(job["timeout_s"]))
    name, dtype, n = job["name"], job["dtype"], job["processes"]
    ov = training.overrides(name)
    weights = OrderedDict((k, torch.from_numpy(v)) for k, v in job["weights"].items())
    model, tx = training.flax_model(name, dtype, **ov), training.optax_optimizer(job["opt"])
    mesh = jax_mesh(n)  # every process's devices
    state = replicate(training.flax_state(training.flax_variables(name, weights, dtype, **ov), tx), mesh)
    step = (jax_global_step if job["mode"] == "global" else jax_replica_step)(model, tx, mesh)
    data = NamedSharding(mesh, PartitionSpec(AXIS))
    losses, out = [], {}
    for i, (x, y) in enumerate(job["batches"]):
        b = len(y) // n
        rows = slice(process_id * b, (process_id + 1) * b)
        xs = jax.make_array_from_process_local_data(data, np.asarray(training.flax_inputs(x[rows], dtype)))
        ys = jax.make_array_from_process_local_data(data, np.asarray(y[rows]))
        state, loss, _ = step(state, xs, ys)
        losses.append(float(loss))
        if i == 0 or i == len(job["batches"]) - 1:
            local = jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)),
                                           {"params": state.params, "batch_stats": state.batch_stats})
            sd = convert.flax_to_torch(local, name, **ov)
            out["step1" if i == 0 else "final"] = {k: v.double().numpy() for k, v in sd.items()
                                                   if "num_batches" not in k}
    out["losses"] = {"loss": np.array(losses)}
    if process_id == 0:
        tmp = job["out"] + ".tmp"
        Path(tmp).write_bytes(pickle.dumps(out))
        os.replace(tmp, job["out"])  # one process writes, atomically
    jax.distributed.shutdown()


# --------------------------------------------------------------------------- torch


def free_port() -> int:
    """A TCP port no one listens on now (picked, not fixed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DDPJob:
    name: str
    weights: Mapping[str, Any]
    batches: list  # global batches (x NCHW, labels); rank r takes rows [r * b, (r + 1) * b)
    opt: training.Optimizer
    dtype: str
    world: int
    port: int
    out: str  # where rank 0 writes the result (atomically)
    timeout_s: float
    device: str = "cpu"
    sync_bn: bool = False


def _ddp_worker(rank: int, job: DDPJob) -> None:
    """One DDP rank: ``len(job.batches)`` steps on its shard; rank 0 writes the result."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.world))
    fault = os.environ.get("PARITY_DDP_FAULT", "")  # tests: "RANK:exit" or "RANK:hang"
    gpu = job.device == "gpu"
    dist.init_process_group("nccl" if gpu else "gloo", init_method=f"tcp://127.0.0.1:{job.port}", rank=rank,
                            world_size=job.world, timeout=timedelta(seconds=job.timeout_s))
    try:
        model = training.torch_model(job.name, job.weights, job.dtype, "gpu" if gpu else "cpu",
                                     **training.overrides(job.name))
        if job.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DistributedDataParallel(model, device_ids=[rank] if gpu else None)
        opt = training.torch_optimizer(job.opt, ddp.parameters())
        losses, out = [], {}
        for i, (x, y) in enumerate(job.batches):
            if fault == f"{rank}:exit" and i == 1:
                os._exit(3)
            if fault == f"{rank}:hang" and i == 1:
                time.sleep(10 * job.timeout_s)
            # progress: a rank that hangs leaves the others waiting in a collective of a later step
            progress(job.out, rank, i)
            b = len(y) // job.world
            xs = training.torch_inputs(x[rank * b:(rank + 1) * b], job.dtype, job.device)
            ys = torch.from_numpy(y[rank * b:(rank + 1) * b]).to(xs.device)
            loss, _ = training.torch_train_step(ddp, opt, xs, ys, job.dtype)
            mean = loss.detach().clone()
            dist.all_reduce(mean)  # the mean of the ranks' losses, as JAX's pmean
            losses.append(float(mean) / job.world)
            if i == 0 or i == len(job.batches) - 1:
                out["step1" if i == 0 else "final"] = {
                    k: v.detach().cpu().double().numpy().copy() for k, v in model.state_dict().items()
                    if "num_batches" not in k}
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
    """The end of a rank's work: every rank waits for the others (no rank tears the process group
    down under one still in a collective), and DDP objects left in reference cycles are freed now,
    while their process group exists, not at interpreter exit. A bench rank once died with SIGABRT
    ("terminate called without an active exception") at its end without these (not reproduced in
    28 tries since; CHANGELOG)."""
    import gc

    import torch.distributed as dist

    dist.barrier()
    gc.collect()


def launch(fn: Callable, job: Any, world: int, timeout_s: float, what: str) -> None:
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


def torch_ddp(name: str, weights: Mapping[str, Any], batches: list, opt: training.Optimizer, dtype: str,
              world: int, timeout_s: float = 120.0, device: str = "cpu", sync_bn: bool = False) -> dict:
    """``len(batches)`` DDP steps over ``world`` processes (``launch``); rank 0's result, as
    ``jax_train``'s."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        job = DDPJob(name, OrderedDict((k, v.detach().cpu()) for k, v in weights.items()), batches, opt, dtype,
                     world, free_port(), str(Path(tmp) / "rank0.pt"), timeout_s, device, sync_bn)
        launch(_ddp_worker, job, world, timeout_s, f"DDP run of {name}")
        return torch.load(job.out, weights_only=False)


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


def torch_replica_reference(name: str, weights: Mapping[str, Any], batches: list, opt: training.Optimizer,
                            dtype: str, world: int) -> dict:
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
            out["step1" if i == 0 else "final"] = {k: v.detach().double().numpy().copy()
                                                   for k, v in model.state_dict().items() if "num_batches" not in k}
    out["losses"] = {"loss": np.array(losses)}
    return out


def _sharded(model: Any, world: int) -> Any:
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


# --------------------------------------------------------------------------- parity


@dataclass
class Comparison:
    """One data-parallel parity: ``what`` against ``against``, per quantity."""

    what: str
    against: str
    kind: str  # "structure" (float64, bound STRUCT_RTOL) or "precision" (float32 vs float64)
    errors: dict[str, float]  # quantity -> worst relative error (structure) or median distance (precision)
    bound: dict[str, float]
    status: dict[str, str] = field(default_factory=dict)  # precision: judgement.PASS / FAIL / NOT_JUDGED
    rule: dict[str, str] = field(default_factory=dict)  # precision: how each quantity was judged, or why not

    @property
    def ok(self) -> bool:
        """Nothing judged failed."""
        if self.kind == "precision":
            return all(s != "fail" for s in self.status.values())
        return all(e <= self.bound[q] for q, e in self.errors.items())

    def not_judged(self) -> list[str]:
        return [f"{self.what} {q}: {self.rule[q]}; not judged" for q, s in self.status.items() if s == "not judged"]


QUANTITIES = ("step1", "final", "losses")


def check(name: str, devices: int = 2, batch: int = 4, size: int | None = None, steps: int = 10, seed: int = 0,
          timeout_s: float = 300.0, samples: int = 5, processes: int = 0) -> list[Comparison]:
    """The data-parallel parities of ``name`` on ``devices`` devices, ``batch`` images per device:
    JAX global statistics = one device on the global batch; JAX per-replica = torch DDP; torch DDP =
    one process normalising each shard; each over ``steps`` SGD steps (step 1 and the end compared,
    and every step's loss), float64 structure, then float32 precision of JAX per-replica against
    DDP's own float32 distance to its float64 run, over ``samples`` starts (the exact weights, then
    one-ulp perturbations), judged as the single-device check judges quantities after a gradient
    step (the rank test: not judged with fewer than 5 samples). With ``processes`` > 1, also JAX
    global statistics over that many ``jax.distributed`` processes."""
    from parity import judgement, statistics
    from parity.config import STRUCT_RTOL, Config
    from parity.weights import initial_weights, make_batches, perturbed

    cfg = Config(name, batch=devices * batch, size=size, steps=steps, seed=seed)
    w64 = initial_weights(cfg)
    batches = make_batches(cfg)
    opt = training.SGD(**cfg.sgd)
    tol = cfg.tolerance

    def structure(a: str, run_a: dict, b: str, run_b: dict) -> Comparison:
        errs = {q: max(statistics.struct_errors(run_a[q], run_b[q]).values()) for q in QUANTITIES}
        return Comparison(a, b, "structure", errs, dict.fromkeys(QUANTITIES, STRUCT_RTOL))

    # each run is compared as soon as its reference exists and then dropped: vgg11_bn's parameters
    # and statistics after step 1 and at the end are 2 GB per run in float64
    one = jax_train(name, w64, batches, opt, "fp64", "single", 1)
    out = [structure("jax global", jax_train(name, w64, batches, opt, "fp64", "global", devices),
                     "jax one device", one)]
    multi = []
    if processes > 1:
        what = f"jax.distributed global, {processes} processes"
        multi.append(structure(what, jax_multiprocess(name, w64, batches, opt, "fp64", processes, "global", timeout_s),
                               "jax one device", one))
    del one
    ref = torch_ddp(name, w64, batches, opt, "fp64", devices, timeout_s)
    out.append(structure("jax per-replica", jax_train(name, w64, batches, opt, "fp64", "replica", devices),
                         "torch DDP", ref))
    out.append(structure("torch DDP", ref, "torch one process, shards",
                         torch_replica_reference(name, w64, batches, opt, "fp64", devices)))
    out += multi
    w32 = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in w64.items())
    del w64
    f_d: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    t_d: dict[str, list[float]] = {q: [] for q in QUANTITIES}

    def distances(into: dict[str, list[float]], run: dict) -> None:
        for q in QUANTITIES:
            into[q].append(statistics.distance(run[q], ref[q]))

    for i in range(samples):
        w = w32 if i == 0 else perturbed(w32, i)
        distances(f_d, jax_train(name, w, batches, opt, "fp32", "replica", devices))
        distances(t_d, torch_ddp(name, w, batches, opt, "fp32", devices, timeout_s))
    # judged as the single-device check judges trajectories (judgement.precision_verdict): every
    # quantity here comes after a gradient step
    verdicts = {q: judgement.precision_verdict(f_d[q], t_d[q], tol, gradient=True) for q in QUANTITIES}
    out.append(Comparison("jax per-replica fp32", "torch DDP fp64", "precision",
                          {q: float(np.median(f_d[q])) for q in QUANTITIES},
                          {q: tol.factor * float(np.median(t_d[q])) + tol.floor for q in QUANTITIES},
                          {q: v.status for q, v in verdicts.items()}, {q: v.rule for q, v in verdicts.items()}))
    return out


# --------------------------------------------------------------------------- the command (parity check --devices N)


def use_cpu_devices(n: int) -> None:
    """N simulated JAX CPU devices; only before JAX has started its backend."""
    import jax

    jax.config.update("jax_num_cpu_devices", n)


def run(names: list[str], args: Any) -> int:
    """``parity check --devices N``: the data-parallel parities per model, a table, report.json."""
    import json

    from parity import report

    if args.device == "cpu":
        use_cpu_devices(args.devices)
    steps = args.steps if args.steps is not None else 10
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    rows = [["model", "compared", "against", "judged", "step 1", "after", "losses", "ok"]]
    results, failed, notes = {}, [], []
    for name in names:
        comps = check(name, args.devices, args.batch, args.size, steps, timeout_s=args.timeout,
                      samples=args.samples, processes=args.processes)
        results[name] = [vars(c) | {"ok": c.ok, "not_judged": c.not_judged()} for c in comps]
        failed += [name] if not all(c.ok for c in comps) else []
        for c in comps:
            rows.append([name, c.what, c.against, c.kind, *(f"{c.errors[q]:.1e}" for q in QUANTITIES),
                         "NO" if not c.ok else "not judged" if c.not_judged() else "yes"])
            notes += [f"{name}: {n}" for n in c.not_judged()]
    print(f"\ndata-parallel parity: {args.devices} devices, {args.batch} images per device, {steps} SGD steps"
          + (" (simulated CPU devices: they share this machine's cores)" if args.device == "cpu" else ""))
    print("structure: float64, worst relative error per quantity (bound 1e-10); precision: float32 distance to "
          "torch DDP float64 (bound 3x DDP's own float32 distance + 1e-5; a rank test over >= 5 samples, "
          "as the single-device check judges trajectories)\n")
    print(report.text_table(rows))
    for n in notes:
        print(f"not judged: {n}")
    print(f"\n{len(names) - len(failed)} passed, {len(failed)} failed")
    (out / "report.json").write_text(json.dumps({"devices": args.devices, "batch_per_device": args.batch,
                                                 "steps": steps, "results": results}, indent=1))
    print(f"report: {out}/report.json")
    return 1 if failed else 0


if __name__ == "__main__":  # a jax_multiprocess process: python -m parity.dataparallel JOB PROCESS_ID
    import sys

    _jax_process(sys.argv[1], int(sys.argv[2]))
