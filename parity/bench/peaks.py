"""The denominators of MFU: a device's nominal peak (datasheet on GPU, cores x FLOP/cycle x clock
on CPU) and a measured matmul rate ("achievable"), each with how it was obtained."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

# Dense peaks (FLOP/s) per device and dtype, from the vendors' datasheets. fp32 on
# Hopper counts TF32 when the run allows it (JAX's default precision, torch's cuDNN default).
# Dense figures: the datasheets' "with sparsity" numbers halved. The first key found in the device's
# name wins, so the PCIe and NVL boards come before the SXM ones they would otherwise match.
GPU_PEAKS = {
    "H100 PCIe": {"bf16": 756e12, "fp32": 51e12, "tf32": 378e12},
    "H100 NVL": {"bf16": 835e12, "fp32": 60e12, "tf32": 418e12},
    "H200 NVL": {"bf16": 835e12, "fp32": 60e12, "tf32": 418e12},
    "H100": {"bf16": 989e12, "fp32": 67e12, "tf32": 495e12},
    "H200": {"bf16": 989e12, "fp32": 67e12, "tf32": 495e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12, "tf32": 156e12},
}


def cpu_peak_probe(dtype: str = "fp32", n: int = 2048, repeats: int = 5, seconds: float = 0.05) -> float:
    """Measured matmul FLOP/s of this CPU (torch, every core): the "achievable" denominator. The size
    grows from 256 to ``n`` only while one product takes under ``seconds``: bf16 without a fast CPU
    kernel runs at about 1 GFLOP/s (a 2048 product 15 s), and the probe stays well under a second."""
    import torch

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    size = min(256, n)
    while True:
        a, b = torch.randn(size, size, dtype=dt), torch.randn(size, size, dtype=dt)
        a @ b
        t = time.perf_counter()
        a @ b
        if time.perf_counter() - t >= seconds or size >= n:
            break
        size *= 2
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


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


def gpu_peak(dtype: str, tf32: bool, name: str | None = None) -> Peak:
    """The datasheet's dense peak of GPU 0 (or of the device called ``name``) for this dtype."""
    if name is None:
        import torch

        name = torch.cuda.get_device_name(0)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            kind = "bf16" if dtype == "bf16" else ("tf32" if tf32 else "fp32")
            return Peak(peaks[kind], f"{key} {kind} datasheet (dense)")
    return Peak(float("nan"), f"unknown GPU {name}: no datasheet peak")


def gpu_peak_probe(dtype: str = "bf16", n: int = 8192, repeats: int = 5) -> float:
    """Measured matmul FLOP/s of GPU 0 (torch, one n^3 product, TF32 allowed for fp32 as the bench
    runs it): the "achievable" denominator on GPU."""
    import torch

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = (torch.randn(n, n, dtype=dt, device="cuda") for _ in range(2))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        a @ b
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / best
