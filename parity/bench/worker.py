"""One benchmark run in this process (``python -m parity.bench.worker JOB_JSON``): the same weights and
batch in every framework, the engine's steps (``parity.training``), compile time apart, each step
synchronised to read its time, peak memory (docs/benchmark.md).

The timed loop: each step is synchronised (``block_until_ready`` / ``torch.cuda.synchronize``) to read
its own time; that is the only host sync, and it is the same for every framework.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import netspecs
from parity import training
from parity.bench import profiling
from parity.bench.jobs import Job, Measurement
from parity.dataparallel import ddp, meshes

if TYPE_CHECKING:
    pass

def inputs(job: Job) -> tuple[Any, np.ndarray, np.ndarray]:
    """(torch state_dict, x NCHW float32, labels) - identical in every worker."""
    import torch

    import torchnets

    spec = netspecs.get(job.model)
    torch.manual_seed(job.seed)
    sd = torchnets.build(job.model, **training.overrides(job.model)).state_dict()
    rng = np.random.default_rng(job.seed)
    n = job.batch * job.devices  # the global batch; device (or rank) r takes rows [r * batch, (r + 1) * batch)
    x = rng.standard_normal((n, spec.in_channels, job.size, job.size), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, n)
    return sd, x, y


def optimizer(lr: float) -> training.SGD:
    """The bench's optimizer, the same in every framework: SGD, momentum 0.9, weight decay 1e-4."""
    return training.SGD(lr, momentum=0.9, weight_decay=1e-4)


# --------------------------------------------------------------------------- JAX


def jax_programs(model: Any, lr: float) -> tuple[Any, Callable, Callable]:
    """(optax optimizer, train (state, x, y) -> (state, (loss, logits)), infer (params, stats, x) -> logits): the
    engine's steps as the bench jits them, only what it reads returned (XLA drops the rest)."""
    tx = training.optax_optimizer(optimizer(lr))
    step = training.flax_train_step(model, tx)

    def train(state, x, y):
        state, out = step(state, x, y)
        return state, (out.loss, out.logits)

    return tx, train, training.flax_eval_step(model)


def _run_jax(job: Job) -> Measurement:
    import jax
    import jax.numpy as jnp

    sd, x_np, y_np = inputs(job)
    dev = jax.devices("gpu" if job.device == "gpu" else "cpu")[0]
    conv_impl = "xla" if job.framework == "jax-xla" else "auto"
    ov = training.overrides(job.model)
    model = training.flax_model(job.model, job.dtype, conv_impl=conv_impl, **ov)
    variables = training.flax_variables(job.model, sd, job.dtype, dev, **ov)
    x, y = training.flax_inputs(x_np, job.dtype, dev), jax.device_put(jnp.asarray(y_np), dev)
    tx, train, infer = jax_programs(model, job.lr)

    if job.mode == "train" and job.devices > 1:
        # DDP's semantics (per-replica BatchNorm), so that both frameworks do the same work
        mesh = meshes.jax_mesh(job.devices)
        step = meshes.jax_replica_step(model, tx, mesh, donate=True)
        x, y = meshes.shard(x, mesh), meshes.shard(y, mesh)
        state = [meshes.replicate(training.flax_state(variables, tx), mesh)]

        def call():
            state[0], loss, logits = step(state[0], x, y)
            return loss, logits

        def hlo():
            return step.lower(state[0], x, y).compile().as_text()
    elif job.mode == "train":
        train = jax.jit(train, donate_argnums=0)  # params, statistics and optimizer state updated in place
        state = [training.flax_state(variables, tx)]

        def call():
            state[0], out = train(state[0], x, y)
            return out

        def hlo():
            return train.lower(state[0], x, y).compile().as_text()
    else:
        infer = jax.jit(infer)
        params, stats = variables["params"], variables.get("batch_stats", {})

        def call():
            return infer(params, stats, x)

        def hlo():
            return infer.lower(params, stats, x).compile().as_text()

    def sync(out):
        jax.block_until_ready(out)

    settings = {"jax": jax.__version__, "jit": True, "conv_impl": conv_impl, "devices": job.devices,
                **({"data_parallel": "jax.shard_map over a Mesh, per-replica BatchNorm"} if job.devices > 1 else {}),
                "donate_argnums": "params, batch_stats, opt_state",
                "layout": "NHWC", "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
                "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "device": str(dev)}
    m = _time(job, call, sync, lambda out: np.asarray(jax.device_get(out), np.float32), y_np, settings)
    if job.profile:
        m.profile = profiling.as_dicts(profiling.jax_ops(call, hlo()))
    if job.device == "gpu":
        m.peak_mem_bytes = int((dev.memory_stats() or {}).get("peak_bytes_in_use", 0))
    return m


# --------------------------------------------------------------------------- torch


def _run_torch(job: Job, rank: int | None = None) -> Measurement:
    """One process's measurement; with ``rank``, that rank of a DDP run (process group initialised)."""
    import torch

    sd, x_np, y_np = inputs(job)
    if rank is not None:
        x_np, y_np = x_np[rank * job.batch:(rank + 1) * job.batch], y_np[rank * job.batch:(rank + 1) * job.batch]
    if job.device == "gpu":
        torch.backends.cudnn.benchmark = True  # cuDNN autotuning, as XLA autotunes its convolutions
    # a DDP rank on its own GPU (made current), else the device's default
    dev = ddp.rank_device(job.device, rank) if rank is not None else training.torch_device(job.device)
    model = training.torch_model(job.model, sd, job.dtype, channels_last=True, **training.overrides(job.model)).to(dev)
    x = training.torch_inputs(x_np, job.dtype, channels_last=True).to(dev)
    y = torch.from_numpy(y_np).to(dev)
    compiled = job.framework == "torch-compile"
    if job.mode == "train":
        model.train()
        net = model
        if rank is not None:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = training.torch_optimizer(optimizer(job.lr), net.parameters())

        def step():
            return training.torch_train_step(net, opt, x, y, job.dtype)

        call = torch.compile(step, mode=job.compile_mode) if compiled else step
    else:
        model.eval()

        def infer():
            with torch.inference_mode():
                return training.torch_eval_step(model, x, job.dtype)

        call = torch.compile(infer, mode=job.compile_mode) if compiled else infer

    def sync(out):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        else:  # CPU kernels return when done; reading one element is the sync
            (out[0] if isinstance(out, tuple) else out).detach().reshape(-1)[:1].cpu()

    settings = {"torch": torch.__version__, "compile": compiled, "devices": job.devices,
                **({"data_parallel": "DistributedDataParallel, one process per device, per-replica BatchNorm"}
                   if job.devices > 1 else {}),
                "compile_mode": job.compile_mode if compiled else None, "memory_format": "channels_last",
                "threads": torch.get_num_threads(), "optimizer_in_compiled_step": compiled and job.mode == "train",
                "cudnn.benchmark": torch.backends.cudnn.benchmark if dev.type == "cuda" else None,
                "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None,
                "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    m = _time(job, call, sync, lambda out: out.detach().float().cpu().numpy(), y_np, settings)
    if job.profile:
        m.profile = profiling.as_dicts(profiling.torch_ops(call, sync))
    if dev.type == "cuda":
        m.peak_mem_bytes = int(torch.cuda.max_memory_allocated())
    return m


# --------------------------------------------------------------------------- timing


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


# rows of the first step's logits kept for the same-work check: the first rows of the global batch,
# which a data-parallel torch run holds on rank 0
LOGIT_ROWS = 8


def _time(job: Job, call, sync, to_numpy, labels: np.ndarray, settings: dict) -> Measurement:
    """Time the first call (compilation) alone, then warm up, then time each step. A train call
    returns (loss, logits), an inference call logits."""
    t = time.perf_counter()
    out = call()
    sync(out)
    compile_s = time.perf_counter() - t
    # the first step's loss and logits (train: before its update), for the same-work check
    loss, logits = out if job.mode == "train" else (None, out)
    logits = to_numpy(logits)
    loss0 = float(to_numpy(loss)) if loss is not None else _cross_entropy(logits, labels)
    rows = logits[:min(LOGIT_ROWS, job.batch)].astype(np.float64).tolist()
    for _ in range(job.warmup):
        sync(call())
    times = []
    for _ in range(job.steps):
        t = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return Measurement(asdict(job), loss0, compile_s, times, peak, settings, first_logits=rows)


def worker(job_json: str) -> None:
    job = Job(**json.loads(job_json))
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    if job.framework.startswith("jax"):
        m = _run_jax(job)
    elif job.devices > 1:
        m = _run_torch_ddp(job)
    else:
        m = _run_torch(job)
    print("RESULT " + json.dumps(asdict(m)))


@dataclass(frozen=True)
class _Ranks:
    job: Job
    port: int
    out: str  # rank 0's Measurement (JSON), written atomically; progress files beside it


def _bench_rank(rank: int, r: _Ranks) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    job = r.job
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.devices))
    dev = ddp.rank_device(job.device, rank)
    dist.init_process_group(ddp.backend(job.device), init_method=f"tcp://127.0.0.1:{r.port}",
                            rank=rank, world_size=job.devices, timeout=timedelta(seconds=job.timeout_s))
    try:
        ddp.progress(r.out, rank, 0)
        m = _run_torch(job, rank)
        first = torch.tensor(m.first_loss, dtype=torch.float64, device=dev)  # NCCL reduces GPU tensors only
        dist.all_reduce(first)  # the mean of the ranks' first losses, as JAX's pmean
        m.first_loss = float(first) / job.devices
        ddp.progress(r.out, rank, 1)
        if rank == 0:
            tmp = r.out + ".tmp"
            Path(tmp).write_text(json.dumps(asdict(m)))
            os.replace(tmp, r.out)
        ddp.finish_ranks()
    finally:
        dist.destroy_process_group()


def _run_torch_ddp(job: Job) -> Measurement:
    """A DDP measurement over ``job.devices`` processes (``parity.dataparallel.ddp.launch``): rank 0's times."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ranks = _Ranks(job, ddp.free_port(), str(Path(tmp) / "rank0.json"))
        ddp.launch(_bench_rank, ranks, job.devices, job.timeout_s, f"torch DDP bench of {job.model}")
        return Measurement(**json.loads(Path(ranks.out).read_text()))


if __name__ == "__main__":
    worker(sys.argv[1])
