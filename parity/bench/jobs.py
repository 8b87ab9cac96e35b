"""What one benchmark run is (``Job``) and what it measured (``Measurement``); each job runs in a fresh
interpreter (``run_job``), with the XLA flags the bench adds for JAX on CPU (docs/benchmark.md).

Numpy and the standard library only: the command imports this before any framework.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from parity import xla_cpu

# jax: the Flax twin as built by default; jax-xla: the same twin with lax's convolution everywhere
# (jaxnets.build(conv_impl="xla")), to show what XLA:CPU's swapped convolutions cost.
FRAMEWORKS = ("jax", "jax-xla", "torch-compile", "torch-eager")


# the XLA flags the bench adds for JAX on CPU (parity.xla_cpu; printed in every report)
TUNED_CPU_XLA_FLAGS, TUNED_CPU_TRAIN_XLA_FLAGS = xla_cpu.TUNED_FLAGS, xla_cpu.TUNED_TRAIN_FLAGS
tuned_cpu_flags = xla_cpu.tuned_flags


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
    profile: bool = False  # after timing, profile one more step (parity.bench.profiling)
    xla_cpu_flags: str = "tuned"  # "tuned": add tuned_cpu_flags(mode) for JAX on CPU; "stock": XLA_FLAGS as given
    devices: int = 1  # data-parallel: ``batch`` images on each of N devices (parity.dataparallel)
    timeout_s: float = 1800  # any collective or rank, data-parallel runs
    optimizer: str = "sgd"  # "sgd" or "adamw" (parity.bench.worker.optimizer)
    pair: dict | None = None  # a user's pair or a saved port (parity.bench.pairs.PairSpec); None: the twin ``model``


@dataclass
class Measurement:
    job: dict
    first_loss: float
    compile_s: float
    times_s: list[float]
    peak_mem_bytes: int
    settings: dict = field(default_factory=dict)
    profile: list[dict] = field(default_factory=list)  # parity.bench.profiling.Op records, when asked
    first_logits: list[list[float]] = field(default_factory=list)  # the first step's first rows (same work)
    # a pair's FLOPs per step: "torch" (FlopCounterMode) or "xla" (XLA's cost analysis)
    flops: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(np.median(self.times_s))


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


class JobError(ValueError):
    """A job its worker refused before measuring: the input it was given is wrong (a spec that does not
    import, modules that reject the input shape, parameters that do not map, a loss that is not a scalar)."""


# the worker's line for a refused job (exit 2): "INPUT-ERROR <message as JSON>"
INPUT_ERROR = "INPUT-ERROR "


def run_job(job: Job, timeout: float = 1800, check: bool = False) -> Measurement | None:
    """One measurement in a fresh interpreter; ``JobError`` if the worker refused the job's input,
    RuntimeError if it fails or runs past ``timeout`` s. ``check``: build and validate only (a pair's
    both sides, weights, inputs and loss), nothing measured."""
    try:
        proc = subprocess.run([sys.executable, "-m", "parity.bench.worker", json.dumps(asdict(job)),
                               *(["--check"] if check else [])],
                              env=worker_env(job),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{job.framework} {job.model} ran past its {timeout:.0f} s limit") from e
    refused = [ln for ln in proc.stderr.splitlines() if ln.startswith(INPUT_ERROR)]
    if refused:
        raise JobError(json.loads(refused[-1][len(INPUT_ERROR):]))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{job.framework} {job.model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(lines[-1][len("RESULT "):])
    return Measurement(**data) if data is not None else None
