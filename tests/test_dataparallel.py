"""Data-parallel parity on 2 simulated JAX CPU devices and 2 torch gloo processes, each run in a
subprocess or process group with a hard timeout; and the clean failure of a rank that dies or hangs."""

import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers
from parity import training
from parity.check.config import Config
from parity.check.weights import initial_weights, make_batches
from parity.dataparallel import check, ddp, meshes

COMPARED = {("jax global", "jax one device"), ("jax per-replica", "torch DDP"),
            ("torch DDP", "torch one process, shards"), ("jax per-replica fp32", "torch DDP fp64")}


def cli_check(tmp_path, model: str, *args: str, timeout: float = 900) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    proc = subprocess.run([sys.executable, "-m", "parity", "check", "--devices", "2", "--models", model,
                           "--report", str(tmp_path), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "simulated CPU devices" in proc.stdout
    return json.loads((tmp_path / "report.json").read_text())


# (model, CLI arguments): resnet20 in the default tier; resnet18 at 64x64, 4 images per device, 10
# steps (at 32x32, 2 images, its last BatchNorm normalises 2 values per channel and replica, and its 10
# steps were chaotic even in float64: 1.5e-1 apart, measured); vgg11_bn huge, not slow: its 133M
# weights make this 5-6 min and a 21 GB peak on a 24 GB, 2-core machine (measured)
TWO_DEVICES = [
    ("resnet20", ["--batch", "4", "--steps", "2", "--samples", "1"]),
    pytest.param("resnet18", ["--batch", "4", "--size", "64", "--steps", "10", "--samples", "1"],
                 marks=pytest.mark.slow),
    pytest.param("vgg11_bn", ["--batch", "4", "--size", "64", "--steps", "3", "--samples", "1"],
                 marks=pytest.mark.huge),
]


@pytest.mark.parametrize("model, args", TWO_DEVICES)
def test_two_devices_all_parities(tmp_path, model, args):
    """JAX global statistics = one device on the global batch; JAX per-replica = torch DDP; DDP = one
    process normalising each shard: float64 structure (running statistics included), over the steps;
    float32 precision with one sample is not judged (the rank test that judges these post-gradient
    quantities needs 5)."""
    data = cli_check(tmp_path, model, *args, timeout=1800)
    comps = data["results"][model]
    assert {(c["what"], c["against"]) for c in comps} == COMPARED
    assert all(c["ok"] for c in comps), comps
    precision = next(c for c in comps if c["kind"] == "precision")
    assert precision["status"] == dict.fromkeys(check.QUANTITIES, "not judged")
    assert precision["not_judged"][0].endswith("needs 5 samples, ran 1; not judged")


def _tiny_run(hook, timeout_s: float):
    cfg = Config("resnet20", batch=4, steps=3)
    return ddp.torch_ddp("resnet20", initial_weights(cfg), make_batches(cfg), training.SGD(0.01), "fp64", 2,
                         timeout_s=timeout_s, hook=hook)


@pytest.mark.parametrize("hook", [helpers.rank_exits, helpers.rank_hangs])
def test_a_rank_that_dies_or_hangs_ends_the_run_naming_it(hook):
    start = time.monotonic()
    with pytest.raises((RuntimeError, TimeoutError), match=r"rank(\(s\))? \[?1"):
        _tiny_run(hook, timeout_s=15)
    assert time.monotonic() - start < 15 + 90  # the stated timeout plus start-up, never a hang
    assert multiprocessing.active_children() == []  # no rank left behind


def test_replica_reference_keeps_rank_zero_statistics():
    """The single-process DDP reference: the loss is the shards' mean, the statistics shard 0's."""
    import torch

    cfg = Config("resnet20", batch=4, steps=1)
    w, (x, y) = initial_weights(cfg), make_batches(cfg)[0]
    got = ddp.torch_replica_reference("resnet20", w, [(x, y)], training.SGD(0.0), "fp64", 2)
    m = training.torch_model("resnet20", w, "fp64").train()
    with torch.no_grad():
        m(torch.from_numpy(x[:2]))  # rank 0's shard alone
    want = {k: v.numpy() for k, v in m.state_dict().items() if "running" in k}
    assert all(np.array_equal(got["step1"][k], v) for k, v in want.items())


@pytest.mark.parametrize("steps", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_jax_distributed_two_processes_equal_one_device(steps):
    """The multi-process form: 2 processes (one CPU device each, gloo) joined by jax.distributed,
    global statistics, against one device on the global batch, float64."""
    from parity.check import statistics
    from parity.check.tolerances import STRUCT_RTOL

    cfg = Config("resnet20", batch=4, steps=steps)
    w, b, opt = initial_weights(cfg), make_batches(cfg), training.SGD(**cfg.sgd)
    multi = meshes.jax_multiprocess("resnet20", w, b, opt, "fp64", 2, timeout_s=120)
    one = meshes.jax_train("resnet20", w, b, opt, "fp64", "single", 1)
    for q in check.QUANTITIES:
        assert max(statistics.struct_errors(multi[q], one[q]).values()) <= STRUCT_RTOL, q


def test_bench_two_devices_reports_scaling(tmp_path):
    from parity.__main__ import main

    code = main(["bench", "--models", "resnet20", "--batch", "4", "--image-size", "32", "--devices", "2",
                 "--frameworks", "jax,torch-eager", "--steps", "2", "--warmup", "0", "--out", str(tmp_path)])
    assert code == 0  # the same-work check passed on 1 and on 2 devices: both did DDP's work
    data = json.loads((tmp_path / "throughput.json").read_text())
    rows = data["results"]
    # the same rows of the first step's logits: rank 0's in torch, the global batch's first in JAX
    assert any("x2 devices: first-step losses" in n and "logits, relative L2 distance" in n for n in data["same_work"])
    one = {r["framework"]: r for r in rows if r["devices"] == 1}
    two = {r["framework"]: r for r in rows if r["devices"] == 2}
    assert set(two) == set(one) == {"jax", "torch-eager"}
    for fw, r in two.items():  # a timing is no pass/fail matter; its arithmetic is
        assert r["global_batch"] == 8 and r["images_per_s"] == pytest.approx(8 / (r["median_ms"] / 1e3))
        assert r["scaling"] == pytest.approx(r["images_per_s"] / (2 * one[fw]["images_per_s"]))
