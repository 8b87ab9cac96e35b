"""The GPU check's preflight (scripts/gpu_check.sh): the versions, the devices each framework sees, and
torch and JAX both computing on the device in one process, as the parity check does. The last line is
``preflight: ok`` or ``preflight: FAILED: <why>``; the exit status says the same."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="gpu")
    args = ap.parse_args()
    problems: list[str] = []
    print(f"python {platform.python_version()} on {platform.machine()}")
    if args.device == "gpu":
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                                 capture_output=True, text=True, timeout=30)
            print(smi.stdout.strip() or smi.stderr.strip())
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            print(listed.strip())
            print(f"GPUs (MIG instances not counted): {sum(ln.startswith('GPU ') for ln in listed.splitlines())}")
        except (OSError, subprocess.TimeoutExpired) as e:
            problems.append(f"nvidia-smi: {e}")
    import numpy as np
    import torch

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
    import flax
    import jax
    import jax.numpy as jnp
    import optax

    print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
          f"backend {jax.default_backend()}, devices {jax.devices()}")
    try:
        import orbax.checkpoint as ocp

        print(f"orbax-checkpoint {getattr(ocp, '__version__', '?')}")
    except ImportError as e:
        print(f"orbax-checkpoint: not importable ({e})")
    if args.device == "gpu":
        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA device")
        try:
            jax.devices("gpu")
        except RuntimeError as e:
            problems.append(f"jax has no GPU backend (the CUDA plugin, jax[cuda12]): {e}")
    if not problems:  # both frameworks on the device in this one process, the same product
        a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
        t_dev = "cuda" if args.device == "gpu" else "cpu"
        try:
            yt = (torch.from_numpy(a).to(t_dev) @ torch.from_numpy(a).to(t_dev)).cpu().double().numpy()
            dev = jax.devices(args.device)[0]
            with jax.default_matmul_precision("highest"):
                yj = np.asarray(jax.device_put(jnp.asarray(a), dev) @ jax.device_put(jnp.asarray(a), dev),
                                np.float64)
            ref = a.astype(np.float64) @ a.astype(np.float64)
            scale = float(np.abs(ref).max())
            et, ej = float(np.abs(yt - ref).max()) / scale, float(np.abs(yj - ref).max()) / scale
            print(f"one process, a 512x512 fp32 matmul on {args.device}: torch {et:.1e}, jax {ej:.1e} "
                  f"(max error / max |float64|)")
            if args.device == "gpu" and torch.backends.cuda.matmul.allow_tf32:
                print("note: torch allows TF32 matmuls by default here")
            if max(et, ej) > 1e-3:  # fp32 gives ~1e-6, TF32 ~1e-3: above that a device computes wrongly
                problems.append(f"the matmul is wrong on the device (torch {et:.1e}, jax {ej:.1e})")
            if args.device == "gpu":
                print(f"torch peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB; "
                      f"jax peak memory {(dev.memory_stats() or {}).get('peak_bytes_in_use', 0) / 2**20:.0f} MiB")
        except Exception as e:  # noqa: BLE001 - any failure here is the preflight's answer
            problems.append(f"computing on the device: {type(e).__name__}: {e}")
    if problems:
        print("preflight: FAILED: " + "; ".join(problems))
        return 1
    print("preflight: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
