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
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from parity import flops, specs

FRAMEWORKS = ("jax", "torch-compile", "torch-eager")

# Dense peaks (FLOP/s) per device and dtype, from the vendors' datasheets (FACTS.md). fp32 on
# Hopper counts TF32 when the run allows it (JAX's default precision, torch's cuDNN default).
GPU_PEAKS = {
    "H100": {"bf16": 989e12, "fp32": 67e12, "tf32": 495e12},
    "H200": {"bf16": 989e12, "fp32": 67e12, "tf32": 495e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12, "tf32": 156e12},
}


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


@dataclass
class Measurement:
    job: dict
    first_loss: float
    compile_s: float
    times_s: list[float]
    peak_mem_bytes: int
    settings: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(np.median(self.times_s))


# --------------------------------------------------------------------------- shared inputs


def overrides(model: str) -> dict:
    """VGG runs with dropout p=0 in both frameworks: their RNGs cannot draw the same masks, and the
    first-step losses must be comparable (dropout is far below 0.1% of VGG's FLOPs)."""
    return {"dropout": 0.0} if isinstance(specs.get(model), specs.VGGSpec) else {}


def _inputs(job: Job) -> tuple[Any, np.ndarray, np.ndarray]:
    """(torch state_dict, x NCHW float32, labels) - identical in every worker."""
    import torch

    import torchnets

    spec = specs.get(job.model)
    torch.manual_seed(job.seed)
    sd = torchnets.build(job.model, **overrides(job.model)).state_dict()
    rng = np.random.default_rng(job.seed)
    x = rng.standard_normal((job.batch, spec.in_channels, job.size, job.size), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, job.batch)
    return sd, x, y


# --------------------------------------------------------------------------- JAX


def _run_jax(job: Job) -> Measurement:
    import jax
    import jax.numpy as jnp
    import optax

    import jaxnets
    from parity import convert

    sd, x_np, y_np = _inputs(job)
    dev = jax.devices("gpu" if job.device == "gpu" else "cpu")[0]
    model = jaxnets.build(job.model, dtype=jnp.bfloat16 if job.dtype == "bf16" else None, **overrides(job.model))
    variables = jax.device_put(convert.torch_to_flax(sd, job.model, **overrides(job.model)), dev)
    params, stats = variables["params"], variables.get("batch_stats", {})
    x = jax.device_put(jnp.asarray(x_np.transpose(0, 2, 3, 1)), dev)
    if job.dtype == "bf16":
        x = x.astype(jnp.bfloat16)  # the batch lives on the device in the compute dtype
    y = jax.device_put(jnp.asarray(y_np), dev)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(job.lr, momentum=0.9))

    def loss_fn(p, s):
        logits, upd = model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
        return loss, upd.get("batch_stats", {})

    if job.mode == "train":
        def step(p, s, o):
            (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
            updates, o = tx.update(g, o, p)
            return optax.apply_updates(p, updates), s, o, loss

        # donated: params, statistics and optimizer state are updated in place
        step = jax.jit(step, donate_argnums=(0, 1, 2))
        state = [params, stats, tx.init(params)]

        def call():
            state[0], state[1], state[2], loss = step(*state)
            return loss
    else:
        infer = jax.jit(lambda p, s: model.apply({"params": p, "batch_stats": s}, x, train=False))

        def call():
            return infer(params, stats)

    def sync(out):
        jax.block_until_ready(out)

    settings = {"jax": jax.__version__, "jit": True, "donate_argnums": "params, batch_stats, opt_state",
                "layout": "NHWC", "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
                "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "device": str(dev)}
    m = _time(job, call, sync, lambda out: np.asarray(jax.device_get(out), np.float32), y_np, settings)
    if job.device == "gpu":
        m.peak_mem_bytes = int((dev.memory_stats() or {}).get("peak_bytes_in_use", 0))
    return m


# --------------------------------------------------------------------------- torch


def _run_torch(job: Job) -> Measurement:
    import torch
    import torch.nn.functional as F

    import torchnets

    sd, x_np, y_np = _inputs(job)
    dev = torch.device("cuda" if job.device == "gpu" else "cpu")
    if job.device == "gpu":
        torch.backends.cudnn.benchmark = True  # cuDNN autotuning, as XLA autotunes its convolutions
    model = torchnets.build(job.model, **overrides(job.model))
    model.load_state_dict(sd)
    model = model.to(dev, memory_format=torch.channels_last)
    x = torch.from_numpy(x_np).to(dev).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(y_np).to(dev)
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=job.dtype == "bf16")  # noqa: E731
    compiled = job.framework == "torch-compile"
    if job.mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=0.9, weight_decay=1e-4)

        def step():
            with autocast():
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        call = torch.compile(step, mode=job.compile_mode) if compiled else step
    else:
        model.eval()

        def infer():
            with torch.inference_mode(), autocast():
                return model(x)

        call = torch.compile(infer, mode=job.compile_mode) if compiled else infer

    def sync(out):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elif isinstance(out, torch.Tensor):
            out.detach().reshape(-1)[:1].cpu()

    settings = {"torch": torch.__version__, "compile": compiled,
                "compile_mode": job.compile_mode if compiled else None, "memory_format": "channels_last",
                "threads": torch.get_num_threads(), "optimizer_in_compiled_step": compiled and job.mode == "train",
                "cudnn.benchmark": torch.backends.cudnn.benchmark if dev.type == "cuda" else None,
                "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None,
                "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    m = _time(job, call, sync, lambda out: out.detach().float().cpu().numpy(), y_np, settings)
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
    m = _run_jax(job) if job.framework == "jax" else _run_torch(job)
    print("RESULT " + json.dumps(asdict(m)))


def run_job(job: Job, timeout: float = 1800) -> Measurement:
    """One measurement in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-m", "parity.bench", json.dumps(asdict(job))],
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{job.framework} {job.model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Measurement(**json.loads(lines[-1][len("RESULT "):]))


# --------------------------------------------------------------------------- peaks and derived numbers


def cpu_peak_probe(dtype: str = "fp32", n: int = 2048, repeats: int = 5) -> float:
    """Measured matmul FLOP/s of this CPU (torch, every core): the MFU denominator on CPU."""
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


def gpu_peak(dtype: str, tf32: bool) -> tuple[float, str]:
    import torch

    name = torch.cuda.get_device_name(0)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            kind = "bf16" if dtype == "bf16" else ("tf32" if tf32 else "fp32")
            return peaks[kind], f"{key} {kind} datasheet"
    return float("nan"), f"unknown GPU {name}"


def derived(m: Measurement, peak: float) -> dict:
    job = Job(**m.job)
    spec = specs.get(job.model)
    per_image = flops.train_flops(spec, job.size) if job.mode == "train" else flops.infer_flops(spec, job.size)
    t = np.asarray(m.times_s)
    ips = job.batch / m.median
    achieved = per_image * ips
    return {"model": job.model, "framework": job.framework, "mode": job.mode, "batch": job.batch,
            "size": job.size, "dtype": job.dtype, "compile_s": m.compile_s, "median_ms": 1e3 * m.median,
            "p10_ms": 1e3 * float(np.percentile(t, 10)), "p90_ms": 1e3 * float(np.percentile(t, 90)),
            "images_per_s": ips, "tflops": achieved / 1e12, "mfu": achieved / peak if peak else float("nan"),
            "peak_mem_mib": m.peak_mem_bytes / 2**20, "first_loss": m.first_loss}


if __name__ == "__main__":
    worker(sys.argv[1])
