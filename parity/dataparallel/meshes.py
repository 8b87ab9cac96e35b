"""Data-parallel training of the Flax twin on JAX's own engine: one ``Mesh`` over N devices with a
``data`` axis (docs/dataparallel.md).

- ``jax_global_step``: ``jax.jit`` with the batch sharded and the state replicated. A mean over the
  batch is then a global mean (XLA inserts the all-reduces), so BatchNorm normalises with the global
  batch's statistics: the single-device step on the global batch.
- ``jax_replica_step``: ``jax.shard_map``. Each replica normalises its own shard, the gradients and the
  loss are averaged (``pmean``) and the running statistics kept are replica 0's: DDP's semantics.
- ``jax_multiprocess``: the global step over several processes joined by ``jax.distributed``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from parity import training
from parity.dataparallel.ddp import free_port, record

if TYPE_CHECKING:
    import flax.linen as fnn
    import jax
    import optax
    import torch
    from jax.sharding import Mesh

AXIS = "data"
# (x NCHW, labels) global batches; device (or rank) r takes rows [r * b, (r + 1) * b)
Batches = list[tuple[np.ndarray, np.ndarray]]
Run = dict[str, dict[str, np.ndarray]]  # "step1", "final", "losses" -> torch key -> float64 array


def use_cpu_devices(n: int) -> None:
    """N simulated JAX CPU devices; only before JAX has started its backend."""
    import jax

    jax.config.update("jax_num_cpu_devices", n)


def jax_mesh(devices: int) -> Mesh:
    """A one-axis mesh over the first ``devices`` devices; a clear error when there are fewer (on CPU,
    JAX_NUM_CPU_DEVICES=N, or jax.config.update('jax_num_cpu_devices', N) before JAX starts)."""
    import jax
    from jax.sharding import Mesh

    have = jax.devices()
    if len(have) < devices:
        raise RuntimeError(f"{devices} devices asked for, JAX has {len(have)} ({have[0].platform}); on CPU set "
                           f"JAX_NUM_CPU_DEVICES={devices} before JAX starts")
    return Mesh(np.array(have[:devices]), (AXIS,))


def shard(x: jax.Array, mesh: Mesh) -> jax.Array:
    """``x`` split over the mesh's data axis along its first dimension."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(AXIS)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def jax_global_step(model: fnn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    donate: bool = False) -> Callable:
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


def jax_replica_step(model: fnn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                     donate: bool = False) -> Callable:
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


def jax_train(name: str, weights: Mapping[str, torch.Tensor], batches: Batches, opt: training.Optimizer,
              dtype: str, mode: str, devices: int, precision: str = "highest") -> Run:
    """``len(batches)`` steps of the Flax twin: ``mode`` "single" (one device), "global" or "replica"
    (``devices`` devices). Returns per-step losses and the parameters and statistics after step 1
    and after the last step, float64 numpy in torch's layout. Matmuls and convolutions at
    ``precision`` (``jax_default_matmul_precision``)."""
    import jax
    import jax.numpy as jnp

    from parity.convert import twins

    ov = training.overrides(name)
    with jax.enable_x64(dtype == "fp64"), jax.default_matmul_precision(precision):
        model = training.flax_model(name, dtype, **ov)
        tx = training.optax_optimizer(opt)
        state = training.flax_state(training.flax_variables(name, weights, dtype, **ov), tx)
        # the state is donated: one copy of the parameters and optimizer state per device, not two
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
                sd = twins.flax_to_torch(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
                                         name, **ov)
                record(out, i, len(batches), {k: v.double().numpy() for k, v in sd.items() if "num_batches" not in k})
    out["losses"] = {"loss": np.array(losses)}
    return out


def _out(result: tuple[training.FlaxState, training.FlaxStep]) -> tuple:
    state, step = result
    return state, step.loss, step.logits


def jax_multiprocess(name: str, weights: Mapping[str, torch.Tensor], batches: Batches, opt: training.Optimizer,
                     dtype: str, processes: int, mode: str = "global", timeout_s: float = 300.0) -> Run:
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
        procs = [subprocess.Popen([sys.executable, "-m", "parity.dataparallel.meshes", str(job), str(i)], env=env,
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

    from parity.convert import twins

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
            sd = twins.flax_to_torch(local, name, **ov)
            record(out, i, len(job["batches"]), {k: v.double().numpy() for k, v in sd.items()
                                                 if "num_batches" not in k})
    out["losses"] = {"loss": np.array(losses)}
    if process_id == 0:
        tmp = job["out"] + ".tmp"
        Path(tmp).write_bytes(pickle.dumps(out))
        os.replace(tmp, job["out"])  # one process writes, atomically
    jax.distributed.shutdown()


if __name__ == "__main__":  # a jax_multiprocess process: python -m parity.dataparallel.meshes JOB PROCESS_ID
    import sys

    _jax_process(sys.argv[1], int(sys.argv[2]))
