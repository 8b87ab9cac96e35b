"""What a measurement means: times, images/s, FLOP rates and MFU (``derived``), the note for a figure
above the nominal peak, and the same-work check between frameworks."""

from __future__ import annotations

import numpy as np

import netspecs
from netspecs import counts
from parity.bench.jobs import Job, Measurement
from parity.bench.peaks import Peak


def derived(m: Measurement, peak: float, achievable: float = float("nan"), step_flops: float | None = None) -> dict:
    """Times, images/s and FLOP rates of one measurement. ``mfu`` divides by ``peak`` (nominal or
    datasheet), ``of_achievable`` by a measured matmul rate; either may exceed 1, see over_peak. FLOPs:
    the twins' analytic count (netspecs.counts), or ``step_flops`` per step of the global batch (a pair's
    count, parity.bench.runs.step_flops). "images" are the batch's rows, whatever they hold."""
    job = Job(**m.job)
    if step_flops is not None:
        per_image = step_flops / (job.batch * job.devices)
    else:
        spec = netspecs.get(job.model)
        per_image = counts.train_flops(spec, job.size) if job.mode == "train" else counts.infer_flops(spec, job.size)
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


def loss_tolerance(device: str, dtype: str) -> float:
    """How far two frameworks' first-step losses (relative gap) and logits (relative L2 distance) may
    be apart: the parity table's factor x floor for this device and dtype at default precision (the
    bench runs at default precision)."""
    from parity.check.tolerances import TOLERANCES

    tol = TOLERANCES[(device, dtype, "default")]
    return tol.factor * tol.floor


def logits_distance(a: list, ref: list) -> float:
    """Relative L2 distance ||a - ref|| / ||ref|| of two first-step logit blocks; inf when their
    shapes differ (a different number of classes is different work)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        return float("inf")
    return float(np.linalg.norm(a - ref) / max(float(np.linalg.norm(ref)), 1e-30))


def same_work(ms: dict[str, Measurement], device: str, dtype: str) -> tuple[bool, str]:
    """Whether the frameworks did the same work: their first-step losses and logits (the first rows
    of the batch, before any update) agree within ``loss_tolerance``. The logits catch what a loss
    can hide: a wrong layout or class order still gives a near-equal mean cross-entropy."""
    losses = {fw: m.first_loss for fw, m in ms.items()}
    ref = next(iter(losses.values()))
    worst = max(abs(v - ref) / max(abs(ref), 1e-12) for v in losses.values())
    tol = loss_tolerance(device, dtype)
    text = ", ".join(f"{fw} {v:.6f}" for fw, v in losses.items())
    text = f"first-step losses {text}; max relative gap {worst:.1e}"
    ok = worst <= tol
    have = {fw: m.first_logits for fw, m in ms.items() if m.first_logits}
    if len(have) == len(ms):  # measurements saved before the logits were recorded have none
        (ref_fw, ref_logits), *rest = have.items()
        dist = {fw: logits_distance(v, ref_logits) for fw, v in rest}
        ok = ok and max(dist.values()) <= tol
        text += ("; first-step logits, relative L2 distance to " + ref_fw + ": "
                 + ", ".join(f"{fw} {d:.1e}" for fw, d in dist.items()))
    return ok, f"{text} (tolerance {tol:.0e})"
