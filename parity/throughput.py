"""Throughput: jax.jit train/infer steps against torch.compile (and eager), doing the same work.

Each (model, batch, size, framework) runs in its own fresh Python process, so that neither
framework's threads, caches or memory peak touch the other's numbers. Every worker builds the
same weights (torchnets' seeded init, through the converter) and the same batch, and reports
its first-step loss; the parent refuses to report a model whose frameworks disagree on it.

Timed loop: each step is synchronised (``block_until_ready`` / ``torch.cuda.synchronize``)
to read its own time; that is the only host sync, and it is the same for every framework.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity import dataparallel, flops, profiling, specs, training

# jax: the Flax twin as built by default; jax-xla: the same twin with lax's convolution everywhere
# (jaxnets.build(conv_impl="xla")), to show what XLA:CPU's swapped convolutions cost.
FRAMEWORKS = ("jax", "jax-xla", "torch-compile", "torch-eager")

# Dense peaks (FLOP/s) per device and dtype, from the vendors' datasheets. fp32 on
# Hopper counts TF32 when the run allows it (JAX's default precision, torch's cuDNN default).
GPU_PEAKS = {
    "H100": {"bf16": 989e12, "fp32": 67e12, "tf32": 495e12},
    "H200": {"bf16": 989e12, "fp32": 67e12, "tf32": 495e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12, "tf32": 156e12},
}


# Added to XLA_FLAGS for JAX on CPU unless --xla-cpu-flags stock (printed in every report): XLA's own
# convolution kernels instead of YNNPACK's, 2-8x faster per convolution here; a choice of kernel
# library, not of numerics (no fast math, no reduced precision). docs/benchmark.md, "XLA flags".
TUNED_CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
# Train steps also get this: XLA:CPU flattens the call graph after fusion instead of before, and its
# fusion then copies less of BatchNorm's backward into the transposes that feed weight gradients;
# 1.15-1.4x on ResNet train steps, no change on VGG, mixed on inference (docs/benchmark.md, "The fourth").
TUNED_CPU_TRAIN_XLA_FLAGS = ("--xla_backend_extra_options=xla_cpu_flatten_after_fusion",)


def tuned_cpu_flags(mode: str) -> tuple[str, ...]:
    """The flags the bench adds for a JAX worker on CPU running ``mode`` ("train" or "infer")."""
    return TUNED_CPU_XLA_FLAGS + (TUNED_CPU_TRAIN_XLA_FLAGS if mode == "train" else ())


@dataclass
class Job:
    model: str
    framework: str
    mode: str = "train"
    batch: int = 32
    size: int = 64
    dtype: str = "fp32"
    device: str = "cpu"
    steps: int = 20
    warmup: int = 3
    compile_mode: str = "default"
    seed: int = 0
    lr: float = 0.01
    threads: int = 0  # 0: every core
    profile: bool = False  # after timing, profile one more step (parity.profiling)
    xla_cpu_flags: str = "tuned"  # "tuned": add tuned_cpu_flags(mode) for JAX on CPU; "stock": XLA_FLAGS as given
    devices: int = 1  # data-parallel: ``batch`` images on each of N devices (parity.dataparallel)
    timeout_s: float = 1800  # any collective or rank, data-parallel runs


@dataclass
class Measurement:
    job: dict
    first_loss: float
    compile_s: float
    times_s: list[float]
    peak_mem_bytes: int
    settings: dict = field(default_factory=dict)
    profile: list[dict] = field(default_factory=list)  # parity.profiling.Op records, when asked

    @property
    def median(self) -> float:
        return float(np.median(self.times_s))


# --------------------------------------------------------------------------- shared inputs


def _inputs(job: Job) -> tuple[Any, np.ndarray, np.ndarray]:
    """(torch state_dict, x NCHW float32, labels) - identical in every worker."""
    import torch

    import torchnets

    spec = specs.get(job.model)
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
    """(optax optimizer, train (state, x, y) -> (state, loss), infer (params, stats, x) -> logits): the
    engine's steps as the bench jits them, only what it reads returned (XLA drops the rest)."""
    tx = training.optax_optimizer(optimizer(lr))
    step = training.flax_train_step(model, tx)

    def train(state, x, y):
        state, out = step(state, x, y)
        return state, out.loss

    return tx, train, training.flax_eval_step(model)


def _run_jax(job: Job) -> Measurement:
    import jax
    import jax.numpy as jnp

    sd, x_np, y_np = _inputs(job)
    dev = jax.devices("gpu" if job.device == "gpu" else "cpu")[0]
    conv_impl = "xla" if job.framework == "jax-xla" else "auto"
    ov = training.overrides(job.model)
    model = training.flax_model(job.model, job.dtype, conv_impl=conv_impl, **ov)
    variables = training.flax_variables(job.model, sd, job.dtype, dev, **ov)
    x, y = training.flax_inputs(x_np, job.dtype, dev), jax.device_put(jnp.asarray(y_np), dev)
    tx, train, infer = jax_programs(model, job.lr)

    if job.mode == "train" and job.devices > 1:
        # DDP's semantics (per-replica BatchNorm), so that both frameworks do the same work
        mesh = dataparallel.jax_mesh(job.devices)
        step = dataparallel.jax_replica_step(model, tx, mesh, donate=True)
        x, y = dataparallel.shard(x, mesh), dataparallel.shard(y, mesh)
        state = [dataparallel.replicate(training.flax_state(variables, tx), mesh)]

        def call():
            state[0], loss, _ = step(state[0], x, y)
            return loss

        def hlo():
            return step.lower(state[0], x, y).compile().as_text()
    elif job.mode == "train":
        train = jax.jit(train, donate_argnums=0)  # params, statistics and optimizer state updated in place
        state = [training.flax_state(variables, tx)]

        def call():
            state[0], loss = train(state[0], x, y)
            return loss

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

    sd, x_np, y_np = _inputs(job)
    if rank is not None:
        x_np, y_np = x_np[rank * job.batch:(rank + 1) * job.batch], y_np[rank * job.batch:(rank + 1) * job.batch]
    if job.device == "gpu":
        torch.backends.cudnn.benchmark = True  # cuDNN autotuning, as XLA autotunes its convolutions
    device = "gpu" if job.device == "gpu" else "cpu"
    model = training.torch_model(job.model, sd, job.dtype, device, channels_last=True,
                                 **training.overrides(job.model))
    x = training.torch_inputs(x_np, job.dtype, device, channels_last=True)
    if rank is not None and job.device == "gpu":
        model, x = model.to(f"cuda:{rank}"), x.to(f"cuda:{rank}")
    y = torch.from_numpy(y_np).to(x.device)
    dev = x.device
    compiled = job.framework == "torch-compile"
    if job.mode == "train":
        model.train()
        net = model
        if rank is not None:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[rank] if job.device == "gpu" else None)
        opt = training.torch_optimizer(optimizer(job.lr), net.parameters())

        def step():
            return training.torch_train_step(net, opt, x, y, job.dtype)[0]

        call = torch.compile(step, mode=job.compile_mode) if compiled else step
    else:
        model.eval()

        def infer():
            with torch.inference_mode():
                return training.torch_eval_step(model, x, job.dtype)

        call = torch.compile(infer, mode=job.compile_mode) if compiled else infer

    def sync(out):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elif isinstance(out, torch.Tensor):
            out.detach().reshape(-1)[:1].cpu()

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


def _time(job: Job, call, sync, to_numpy, labels: np.ndarray, settings: dict) -> Measurement:
    """Time the first call (compilation) alone, then warm up, then time each step."""
    t = time.perf_counter()
    out = call()
    sync(out)
    compile_s = time.perf_counter() - t
    # the first step's loss (train: before its update; infer: of the logits), for the same-work check
    first = to_numpy(out)
    loss0 = float(first) if job.mode == "train" else _cross_entropy(first, labels)
    for _ in range(job.warmup):
        sync(call())
    times = []
    for _ in range(job.steps):
        t = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return Measurement(asdict(job), loss0, compile_s, times, peak, settings)


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
    dist.init_process_group("nccl" if job.device == "gpu" else "gloo", init_method=f"tcp://127.0.0.1:{r.port}",
                            rank=rank, world_size=job.devices, timeout=timedelta(seconds=job.timeout_s))
    try:
        dataparallel.progress(r.out, rank, 0)
        m = _run_torch(job, rank)
        first = torch.tensor(m.first_loss, dtype=torch.float64)
        dist.all_reduce(first)  # the mean of the ranks' first losses, as JAX's pmean
        m.first_loss = float(first) / job.devices
        dataparallel.progress(r.out, rank, 1)
        if rank == 0:
            tmp = r.out + ".tmp"
            Path(tmp).write_text(json.dumps(asdict(m)))
            os.replace(tmp, r.out)
        dataparallel.finish_ranks()
    finally:
        dist.destroy_process_group()


def _run_torch_ddp(job: Job) -> Measurement:
    """A DDP measurement over ``job.devices`` processes (``dataparallel.launch``): rank 0's times."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ranks = _Ranks(job, dataparallel.free_port(), str(Path(tmp) / "rank0.json"))
        dataparallel.launch(_bench_rank, ranks, job.devices, job.timeout_s, f"torch DDP bench of {job.model}")
        return Measurement(**json.loads(Path(ranks.out).read_text()))


def worker_env(job: Job) -> dict[str, str]:
    """The worker's environment: this one, plus the tuned XLA flags for a JAX job on CPU (a flag the
    user already set in XLA_FLAGS is left as the user set it)."""
    env = dict(os.environ)
    if job.framework.startswith("jax") and job.device == "cpu" and job.xla_cpu_flags == "tuned":
        have = env.get("XLA_FLAGS", "")
        add = [f for f in tuned_cpu_flags(job.mode) if f.split("=")[0] not in have]
        env["XLA_FLAGS"] = " ".join([have, *add]).strip()
    if job.framework.startswith("jax") and job.device == "cpu" and job.devices > 1:
        env["JAX_NUM_CPU_DEVICES"] = str(job.devices)  # simulated devices: they share this machine's cores
    return env


def tuned_flags_supported(timeout: float = 120) -> bool:
    """Whether this jaxlib accepts the tuned flags (XLA aborts on a flag it does not know)."""
    env = worker_env(Job("resnet18", "jax"))
    proc = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                          env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode == 0


def run_job(job: Job, timeout: float = 1800) -> Measurement:
    """One measurement in a fresh interpreter; RuntimeError if it fails or runs past ``timeout`` s."""
    try:
        proc = subprocess.run([sys.executable, "-m", "parity.throughput", json.dumps(asdict(job))],
                              env=worker_env(job),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{job.framework} {job.model} ran past its {timeout:.0f} s limit") from e
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{job.framework} {job.model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Measurement(**json.loads(lines[-1][len("RESULT "):]))


# --------------------------------------------------------------------------- peaks and derived numbers


def cpu_peak_probe(dtype: str = "fp32", n: int = 2048, repeats: int = 5) -> float:
    """Measured matmul FLOP/s of this CPU (torch, every core): the "achievable" denominator."""
    import torch

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s; nan when unknown
    source: str  # how it was obtained, printed beside every MFU figure


def cpu_nominal_peak(cpuinfo: str | None = None, cores: int | None = None) -> Peak:
    """cores x fp32 FLOP/cycle x clock, from /proc/cpuinfo: AVX-512 64 FLOP/cycle (2 FMA units of 16
    lanes, 2 FLOPs each), AVX2+FMA 32, else SSE 8. The clock is the one cpuinfo reports (often the
    base clock: a core boosting above it can exceed this peak)."""
    if cpuinfo is None:
        try:
            cpuinfo = open("/proc/cpuinfo").read()
        except OSError:
            return Peak(float("nan"), "nominal unknown (no /proc/cpuinfo)")
    cores = cores or len(os.sched_getaffinity(0))
    flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo, re.M).group(1).split()) if "flags" in cpuinfo else set()
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)]
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    if not mhz:
        return Peak(float("nan"), "nominal unknown (no clock in /proc/cpuinfo)")
    isa, per_cycle = (("AVX-512", 64) if "avx512f" in flags else ("AVX2+FMA", 32) if {"avx2", "fma"} <= flags
                      else ("SSE", 8))
    ghz = max(mhz) / 1e3
    name = model.group(1).strip() if model else "CPU"
    return Peak(cores * per_cycle * ghz * 1e9,
                f"nominal: {name}, {cores} cores x {per_cycle} fp32 FLOP/cycle ({isa}, 2 FMA units assumed) "
                f"x {ghz:.2f} GHz (/proc/cpuinfo)")


def gpu_peak(dtype: str, tf32: bool) -> Peak:
    """The datasheet's dense peak of GPU 0 for this dtype."""
    import torch

    name = torch.cuda.get_device_name(0)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            kind = "bf16" if dtype == "bf16" else ("tf32" if tf32 else "fp32")
            return Peak(peaks[kind], f"{key} {kind} datasheet")
    return Peak(float("nan"), f"unknown GPU {name}: no datasheet peak")


def derived(m: Measurement, peak: float, achievable: float = float("nan")) -> dict:
    """Times, images/s and FLOP rates of one measurement. ``mfu`` divides by ``peak`` (nominal or
    datasheet), ``of_achievable`` by a measured matmul rate; either may exceed 1, see over_peak."""
    job = Job(**m.job)
    spec = specs.get(job.model)
    per_image = flops.train_flops(spec, job.size) if job.mode == "train" else flops.infer_flops(spec, job.size)
    t = np.asarray(m.times_s)
    ips = job.batch * job.devices / m.median  # global images/s
    achieved = per_image * ips
    return {"model": job.model, "framework": job.framework, "mode": job.mode, "batch": job.batch,
            "devices": job.devices, "global_batch": job.batch * job.devices,
            "size": job.size, "dtype": job.dtype, "compile_s": m.compile_s, "median_ms": 1e3 * m.median,
            "p10_ms": 1e3 * float(np.percentile(t, 10)), "p90_ms": 1e3 * float(np.percentile(t, 90)),
            "images_per_s": ips, "tflops": achieved / 1e12, "mfu": achieved / peak if peak else float("nan"),
            "of_achievable": achieved / achievable if achievable else float("nan"),
            "peak_mem_mib": m.peak_mem_bytes / 2**20, "first_loss": m.first_loss}


def over_peak(row: dict, peak: Peak) -> str | None:
    """Why a figure above 100% of the nominal peak can appear, or None when it does not."""
    if not row["mfu"] > 1:
        return None
    return (f"{row['model']} {row['framework']}: {100 * row['mfu']:.0f}% of the nominal peak. The FLOP count is "
            f"exact for convolutions and linear layers, so the clock is the likely cause: {peak.source}; a core "
            "boosting above that clock runs faster than this peak assumes.")


if __name__ == "__main__":
    worker(sys.argv[1])
