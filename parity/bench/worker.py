"""One benchmark run in this process (``python -m parity.bench.worker JOB_JSON [--check]``): the same
weights and batch in every framework, the engine's steps (``parity.training``), compile time apart, each
step synchronised to read its time, peak memory (docs/benchmark.md). A twin, or a user's pair or saved
port (``parity.bench.pairs``), built into a ``Work`` per framework; ``--check`` builds a pair in both
frameworks and measures nothing.

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
from typing import Any

import numpy as np

import netspecs
from parity import training
from parity.bench import pairs as bench_pairs
from parity.bench import profiling
from parity.bench.jobs import INPUT_ERROR, Job, Measurement
from parity.dataparallel import ddp, meshes


def inputs(job: Job) -> tuple[Any, np.ndarray, np.ndarray]:
    """A twin job's (torch state_dict, x NCHW float32, labels) - identical in every worker."""
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


def optimizer(lr: float, name: str = "sgd") -> training.Optimizer:
    """The bench's optimizer, the same in every framework: SGD, momentum 0.9, weight decay 1e-4; or
    AdamW at its defaults (lr 1e-3, weight decay 1e-2)."""
    if name == "adamw":
        return training.AdamW()
    if name != "sgd":
        raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {name!r}")
    return training.SGD(lr, momentum=0.9, weight_decay=1e-4)


@dataclass
class Work:
    """What a worker runs, in its framework: the model, its arguments, the loss's target, the loss
    (None: cross-entropy) and, for infer mode's same-work figure, the loss of one output."""

    model: Any
    args: tuple
    target: Any
    loss: Callable | None
    loss_of: Callable[[Any], float]
    variables: dict | None = None  # JAX: the Flax variables
    mode: Callable[[bool], dict] = training._train_flag  # JAX: the Flax call's train/eval arguments
    outputs: Callable[[Any], list[np.ndarray]] = lambda out: [out]  # an output as numpy arrays, Flax layout


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


# --------------------------------------------------------------------------- JAX


def jax_programs(model: Any, lr: float, loss: Callable | None = None,
                 mode: Callable[[bool], dict] = training._train_flag,
                 optimizer_name: str = "sgd") -> tuple[Any, Callable, Callable]:
    """(optax optimizer, train (state, x, y) -> (state, (loss, logits)), infer (params, stats, x) -> logits): the
    engine's steps as the bench jits them, only what it reads returned (XLA drops the rest)."""
    tx = training.optax_optimizer(optimizer(lr, optimizer_name))
    step = training.flax_train_step(model, tx, loss=loss, mode=mode)

    def train(state, x, y):
        state, out = step(state, x, y)
        return state, (out.loss, out.logits)

    return tx, train, training.flax_eval_step(model, mode=mode)


def _jax_numpy(out: Any) -> list[np.ndarray]:
    import jax

    return [np.asarray(a, np.float32) for a in jax.tree_util.tree_leaves(jax.device_get(out))]


def _jax_work(job: Job, dev: Any, conv_impl: str) -> Work:
    import jax
    import jax.numpy as jnp

    if job.pair is None:
        sd, x_np, y_np = inputs(job)
        ov = training.overrides(job.model)
        model = training.flax_model(job.model, job.dtype, conv_impl=conv_impl, **ov)
        variables = training.flax_variables(job.model, sd, job.dtype, dev, **ov)
        x, y = training.flax_inputs(x_np, job.dtype, dev), jax.device_put(jnp.asarray(y_np), dev)
        return Work(model, (x,), y, None, lambda out: _cross_entropy(_jax_numpy(out)[0], y_np), variables,
                    outputs=_jax_numpy)
    from parity.check import pairs as engine_pairs

    spec = bench_pairs.PairSpec.from_json(job.pair)
    tm, fm = bench_pairs.torch_module(spec, job.seed), bench_pairs.flax_module(spec)
    arrays = bench_pairs.inputs(spec, job.seed)
    p = bench_pairs.pair(spec, tm, fm, arrays)
    flat = p.to_flax(tm.state_dict())  # the torch module's weights, moved by the mapping rules
    del tm
    variables = jax.device_put(jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float32) if np.issubdtype(a.dtype, np.floating) else jnp.asarray(a), flat), dev)
    args = tuple(jax.device_put(jnp.asarray(a), dev) for a in engine_pairs.flax_args(arrays, spec.images))
    model = p.flax_module("fp32")

    def apply(v, *a):
        return model.apply(v, *a, **p.flax_mode(False))

    try:
        out_shapes = [tuple(o.shape) for o in jax.tree_util.tree_leaves(jax.eval_shape(apply, variables, *args))]
    except Exception as e:
        raise ValueError(f"the Flax module rejects inputs of shapes {[tuple(a.shape) for a in args]}: "
                         f"{type(e).__name__}: {e}") from e
    kind, target = bench_pairs.targets(out_shapes, job.seed)
    target = jax.device_put(jax.tree_util.tree_map(jnp.asarray, target), dev)
    _, loss = bench_pairs.losses(spec, kind)
    lossfn = loss or training._flax_loss
    outs = jax.eval_shape(apply, variables, *args)
    bench_pairs.check_scalar("Flax", jax.eval_shape(lossfn, outs, target).shape)
    return Work(model, args, target, loss, lambda out: float(lossfn(out, target)), variables, p.flax_mode,
                _jax_numpy)


def _run_jax(job: Job, check: bool = False) -> Measurement | None:
    import jax

    dev = jax.devices("gpu" if job.device == "gpu" else "cpu")[0]
    conv_impl = "xla" if job.framework == "jax-xla" else "auto"
    w = _jax_work(job, dev, conv_impl)
    if check:
        return None
    model, variables = w.model, w.variables
    x, y = w.args if job.pair is not None else w.args[0], w.target
    tx, train, infer = jax_programs(model, job.lr, w.loss, w.mode, job.optimizer)
    # the bench's XLA:CPU options reach the compiler through XLA_FLAGS (jobs.worker_env); per compile
    # only where they do not ("stock" adds none, and a user's XLA_FLAGS wins)
    jit = training.jit if job.xla_cpu_flags == "tuned" else jax.jit

    if job.mode == "train" and job.devices > 1:
        # DDP's semantics (per-replica BatchNorm), so that both frameworks do the same work
        mesh = meshes.jax_mesh(job.devices)
        step = meshes.jax_replica_step(model, tx, mesh, donate=True)
        x, y = meshes.shard(x, mesh), meshes.shard(y, mesh)
        state = [meshes.replicate(training.flax_state(variables, tx), mesh)]

        def call():
            state[0], loss, logits = step(state[0], x, y)
            return loss, logits

        def compiled():
            return step.lower(state[0], x, y).compile()
    elif job.mode == "train":
        train = jit(train, job.device, donate_argnums=0)  # params, statistics and optimizer state updated in place
        state = [training.flax_state(variables, tx)]

        def call():
            state[0], out = train(state[0], x, y)
            return out

        def compiled():
            return train.lower(state[0], x, y).compile()
    else:
        infer = jit(infer, job.device)
        params, stats = variables["params"], variables.get("batch_stats", {})

        def call():
            return infer(params, stats, x)

        def compiled():
            return infer.lower(params, stats, x).compile()

    def sync(out):
        jax.block_until_ready(out)

    settings = {"jax": jax.__version__, "jit": True, "conv_impl": conv_impl, "devices": job.devices,
                **({"data_parallel": "jax.shard_map over a Mesh, per-replica BatchNorm"} if job.devices > 1 else {}),
                "donate_argnums": "params, batch_stats, opt_state",
                "layout": "NHWC", "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
                "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "device": str(dev)}
    m = _time(job, call, sync, w, settings)
    if job.profile:
        m.profile = profiling.as_dicts(profiling.jax_ops(call, compiled().as_text()))
    if job.pair is not None:
        m.flops["xla"] = bench_pairs.xla_flops(compiled())
    if job.device == "gpu":
        m.peak_mem_bytes = int((dev.memory_stats() or {}).get("peak_bytes_in_use", 0))
    return m


# --------------------------------------------------------------------------- torch


def _torch_work(job: Job, dev: Any, rank: int | None) -> Work:
    import torch

    def numpy(out: Any) -> list[np.ndarray]:
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]

    if job.pair is None:
        sd, x_np, y_np = inputs(job)
        if rank is not None:
            x_np, y_np = x_np[rank * job.batch:(rank + 1) * job.batch], y_np[rank * job.batch:(rank + 1) * job.batch]
        model = training.torch_model(job.model, sd, job.dtype, channels_last=True,
                                     **training.overrides(job.model)).to(dev)
        x = training.torch_inputs(x_np, job.dtype, channels_last=True).to(dev)
        return Work(model, (x,), torch.from_numpy(y_np).to(dev), None,
                    lambda out: _cross_entropy(numpy(out)[0], y_np), outputs=numpy)
    from parity import layout
    from parity.check import pairs as engine_pairs

    spec = bench_pairs.PairSpec.from_json(job.pair)
    model = bench_pairs.torch_module(spec, job.seed)
    arrays = bench_pairs.inputs(spec, job.seed)
    images = spec.images and any(np.issubdtype(a.dtype, np.floating) and a.ndim == 4 for a in arrays)
    if images:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(dev)
    args = tuple((training.torch_inputs(a, job.dtype, channels_last=spec.images) if np.issubdtype(a.dtype, np.floating)
                  else torch.from_numpy(a)).to(dev) for a in arrays)
    out = engine_pairs.torch_eval(model, args)

    def flax_layout(out: Any) -> list[np.ndarray]:
        return [layout.channels_last(o, spec.images) for o in numpy(out)]

    kind, target = bench_pairs.targets([o.shape for o in flax_layout(out)], job.seed)
    def back(t: np.ndarray) -> torch.Tensor:  # drawn in the Flax layout (the same numbers in both workers)
        return torch.from_numpy(np.ascontiguousarray(layout.channels_first(t, spec.images))).to(dev)

    if kind == "mse":
        target = tuple(map(back, target)) if isinstance(target, tuple) else back(target)
    else:
        target = torch.from_numpy(target).to(dev)
    loss, _ = bench_pairs.losses(spec, kind)
    lossfn = loss or training._torch_loss
    with torch.no_grad():
        bench_pairs.check_scalar("torch", tuple(lossfn(out, target).shape))
    del out
    return Work(model, args, target, loss, lambda o: float(lossfn(o, target)), outputs=flax_layout)


def _run_torch(job: Job, rank: int | None = None, check: bool = False) -> Measurement | None:
    """One process's measurement; with ``rank``, that rank of a DDP run (process group initialised)."""
    import torch

    if job.device == "gpu":
        torch.backends.cudnn.benchmark = True  # cuDNN autotuning, as XLA autotunes its convolutions
    # a DDP rank on its own GPU (made current), else the device's default
    dev = ddp.rank_device(job.device, rank) if rank is not None else training.torch_device(job.device)
    w = _torch_work(job, dev, rank)
    if check:
        return None
    model, y = w.model, w.target
    x = w.args if job.pair is not None else w.args[0]
    compiled = job.framework == "torch-compile"
    if job.mode == "train":
        model.train()
        net = model
        if rank is not None:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = training.torch_optimizer(optimizer(job.lr, job.optimizer), net.parameters())

        def step():
            return training.torch_train_step(net, opt, x, y, job.dtype, w.loss)

        def counted():  # forward and backward, as FlopCounterMode counts a train step
            opt.zero_grad(set_to_none=True)
            training.torch_backward(net, x, y, job.dtype, w.loss)

        call = torch.compile(step, mode=job.compile_mode) if compiled else step
    else:
        model.eval()

        def infer():
            with torch.inference_mode():
                return training.torch_eval_step(model, x, job.dtype)

        counted = infer
        call = torch.compile(infer, mode=job.compile_mode) if compiled else infer

    def sync(out):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        else:  # CPU kernels return when done; reading one element is the sync
            first = out[0] if isinstance(out, tuple) else out
            first = first[0] if isinstance(first, (tuple, list)) else first
            first.detach().reshape(-1)[:1].cpu()

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
    m = _time(job, call, sync, w, settings)
    if job.profile:
        m.profile = profiling.as_dicts(profiling.torch_ops(call, sync))
    if dev.type == "cuda":
        m.peak_mem_bytes = int(torch.cuda.max_memory_allocated())
    if job.pair is not None:  # after timing: the counted step runs eagerly and updates nothing the timing read
        m.flops["torch"] = bench_pairs.torch_flops(model, counted)
    return m


# --------------------------------------------------------------------------- timing


def _time(job: Job, call, sync, work: Work, settings: dict) -> Measurement:
    """Time the first call (compilation) alone, then warm up, then time each step. A train call
    returns (loss, outputs), an inference call the outputs."""
    t = time.perf_counter()
    out = call()
    sync(out)
    compile_s = time.perf_counter() - t
    # the first step's loss and outputs (train: before its update), for the same-work check
    loss, outputs = out if job.mode == "train" else (None, out)
    loss0 = float(np.asarray(loss if not hasattr(loss, "detach") else loss.detach().cpu(), np.float64)) \
        if loss is not None else work.loss_of(outputs)
    # the first rows of the global batch, which a data-parallel torch run holds on rank 0
    rows = bench_pairs.output_rows(work.outputs(outputs), job.batch)
    del out, loss, outputs
    for _ in range(job.warmup):
        sync(call())
    times = []
    for _ in range(job.steps):
        t = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return Measurement(asdict(job), loss0, compile_s, times, peak, settings, first_logits=rows)


def worker(job_json: str, check: bool = False) -> None:
    """Measure one job and print its ``RESULT`` line; ``check``: build and validate it only. A job whose
    input is wrong (parity.bench.jobs.JobError) prints its ``INPUT-ERROR`` line and exits 2."""
    from parity.convert.files import CheckpointError
    from parity.imports import SpecError

    job = Job(**json.loads(job_json))
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    try:
        if job.framework.startswith("jax"):
            m = _run_jax(job, check)
        elif job.devices > 1:
            m = _run_torch_ddp(job)
        elif check:  # a pair's whole input, both frameworks: nothing measured
            m = _run_torch(job, check=True) or _run_jax(job, check=True)
        else:
            m = _run_torch(job)
    except (SpecError, CheckpointError, ValueError, TypeError) as e:  # MappingError is a ValueError
        if job.pair is None:
            raise
        print(INPUT_ERROR + json.dumps(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)),
              file=sys.stderr)
        sys.exit(2)
    print("RESULT " + json.dumps(asdict(m) if m is not None else None))  # None: checked, nothing measured


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
    worker(sys.argv[1], check="--check" in sys.argv[2:])
