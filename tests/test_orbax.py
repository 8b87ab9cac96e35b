"""Orbax checkpoint directories (parity.convert.orbax_dirs): round trips, checkpoints written by plain
Orbax code, damaged and unfinished directories, and a training state that goes on training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from test_convert import assert_bits_equal, random_state_dict

import jaxnets
import torchnets
from parity import convert, training
from parity.__main__ import main
from parity.convert import files, orbax_dirs


def plain_save(path, tree):
    """What a Flax user's own code does (Flax's documentation): no code of this project."""
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, tree)
    ckptr.wait_until_finished()


# one variant of each family: VGG (its classifier's layout), ImageNet ResNet and plain net, CIFAR ResNet
# and plain net
@pytest.mark.parametrize("name", [pytest.param("vgg11_bn", marks=pytest.mark.slow),  # 133M weights
                                  "resnet18", "plain18", "resnet20", "plain20"])
def test_torch_orbax_torch_is_bit_exact(tmp_path, name):
    sd = random_state_dict(name)
    files.save(tmp_path / "ck", convert.torch_to_flax(sd, name), fmt="orbax")
    assert (tmp_path / "ck" / "_METADATA").is_file()
    assert_bits_equal(sd, convert.flax_to_torch(files.load(tmp_path / "ck"), name))


def test_restored_against_the_models_abstract_tree_and_every_difference_named(tmp_path):
    model = jaxnets.build("resnet20")
    x = np.zeros((1, 32, 32, 3), np.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    plain_save(tmp_path / "ck", variables)
    like = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    got = orbax_dirs.load(tmp_path / "ck", like=like)
    assert jax.tree.structure(got) == jax.tree.structure(like)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(variables), strict=True))
    other = jax.eval_shape(lambda: jaxnets.build("resnet20", num_classes=7).init(jax.random.key(0), x, train=False))
    other = {"params": dict(other["params"]), "batch_stats": other["batch_stats"]}
    other["params"]["extra"] = {"kernel": jax.ShapeDtypeStruct((2,), np.float32)}
    with pytest.raises(files.CheckpointError) as e:
        orbax_dirs.load(tmp_path / "ck", like=other)
    msg = str(e.value)
    assert "3 problem(s)" in msg and "missing: params/extra/kernel (2,) float32" in msg
    assert "params/fc/kernel: the checkpoint holds (64, 10) float32, expected (64, 7) float32" in msg
    assert "params/fc/bias: the checkpoint holds (10,) float32, expected (7,) float32" in msg


def test_plain_orbax_checkpoints_convert_to_torch(tmp_path, capsys):
    """Written by Orbax itself: a StandardCheckpointer directory, one step of a CheckpointManager run,
    and flax's TrainState (its step and optimizer state stay behind, said)."""
    import optax
    from flax.training import train_state

    model = jaxnets.build("resnet20")
    variables = model.init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32), train=False)
    plain_save(tmp_path / "std", variables)
    assert main(["convert", str(tmp_path / "std"), str(tmp_path / "a.safetensors"), "--to", "torch",
                 "--model", "resnet20"]) == 0
    sd = files.load(tmp_path / "a.safetensors")
    assert_bits_equal(sd, convert.flax_to_torch(jax.tree.map(np.asarray, variables), "resnet20"))

    mgr = ocp.CheckpointManager(tmp_path / "run")
    for step in (0, 5):
        mgr.save(step, args=ocp.args.StandardSave(variables))
    mgr.wait_until_finished()
    mgr.close()
    assert main(["convert", str(tmp_path / "run" / "5"), str(tmp_path / "b.safetensors"), "--model", "resnet20"]) == 0
    assert_bits_equal(sd, files.load(tmp_path / "b.safetensors"))
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "c.safetensors"), "--model", "resnet20"]) == 1
    err = capsys.readouterr().err
    assert "ocp.CheckpointManager directory with steps 0, 5; name one step" in err
    assert not (tmp_path / "c.safetensors").exists()

    class TrainState(train_state.TrainState):  # flax's own pattern for a model with BatchNorm
        batch_stats: Any

    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.sgd(0.1, 0.9),
                              batch_stats=variables["batch_stats"])
    plain_save(tmp_path / "ts", state)
    assert files.load(tmp_path / "ts").keys() == {"params", "batch_stats"}
    assert orbax_dirs.others(tmp_path / "ts") == ["opt_state", "step"]
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ts"), str(tmp_path / "d.safetensors"), "--model", "resnet20"]) == 0
    assert "converting its Flax variables (params, batch_stats); not converted: opt_state, step" in \
        capsys.readouterr().out
    assert_bits_equal(sd, files.load(tmp_path / "d.safetensors"))


def test_cli_torch_to_orbax_and_back(tmp_path, capsys):
    torch.manual_seed(3)
    sd = torchnets.build("resnet20").state_dict()  # a model's weights: the conversion is verified on a batch
    torch.save(sd, tmp_path / "m.pth")
    assert main(["convert", str(tmp_path / "m.pth"), str(tmp_path / "out"), "--to", "flax", "--format", "orbax",
                 "--model", "resnet20"]) == 0
    assert "(Orbax checkpoint)" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "out"), str(tmp_path / "back.pt"), "--to", "torch",
                 "--model", "resnet20"]) == 0
    assert_bits_equal(sd, files.load(tmp_path / "back.pt"))
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "m.pth"), str(tmp_path / "out"), "--format", "orbax",
                 "--model", "resnet20"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "m.pth"), str(tmp_path / "noext"), "--model", "resnet20"]) == 2
    assert "--format orbax" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "out"), str(tmp_path / "x"), "--to", "torch", "--format", "orbax"]) == 2
    assert "does not hold torch's weights" in capsys.readouterr().err
    with pytest.raises(files.CheckpointError, match="holds Flax variables"):
        files.save(tmp_path / "sd", sd, fmt="orbax")


# Orbax's restore of the truncated copy fails inside its own event loop, which leaves callbacks behind
# once it is closed (its warning, not a problem of the directory or of this code)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_partial_and_foreign_directories_are_named(tmp_path):
    sd = random_state_dict("resnet20")
    files.save(tmp_path / "ck", convert.torch_to_flax(sd, "resnet20"), fmt="orbax")
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "ck", truncated)
    for d in truncated.rglob("d"):
        shutil.rmtree(d)  # the array data gone, the metadata kept: a copy cut short
    with pytest.raises(files.CheckpointError, match=r"truncated: not a readable Orbax checkpoint.*\(missing: .*\bd\b"):
        files.load(truncated)
    no_meta = tmp_path / "no_meta"
    shutil.copytree(tmp_path / "ck", no_meta)
    (no_meta / "_METADATA").unlink()
    with pytest.raises(files.CheckpointError, match="no_meta: not an Orbax checkpoint: no _METADATA file"):
        files.load(no_meta)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(files.CheckpointError, match=r"not an Orbax checkpoint.*found: weights.bin"):
        files.load(tmp_path / "foreign")
    with pytest.raises(files.CheckpointError, match="holds the checkpoint"):
        files.load(tmp_path)  # the folder above a checkpoint: named, not guessed
    with pytest.raises(files.CheckpointError, match="no such checkpoint directory"):
        files.load(tmp_path / "absent")
    bad = convert.torch_to_flax(sd, "resnet20")
    bad["params"]["fc"]["bias"] = bad["params"]["fc"]["bias"].copy()
    bad["params"]["fc"]["bias"][3] = np.nan
    bad["batch_stats"]["bn1"]["var"] = np.full_like(bad["batch_stats"]["bn1"]["var"], np.inf)
    plain_save(tmp_path / "nan", bad)
    with pytest.raises(files.CheckpointError, match=r"NaN or Inf in 2 array\(s\): batch_stats/bn1/var, params/fc/bias"):
        files.load(tmp_path / "nan")
    assert np.isnan(files.load(tmp_path / "nan", allow_nonfinite=True)["params"]["fc"]["bias"][3])


KILLED_SAVE = """
import os, sys, time
import numpy as np
from parity.convert import orbax_dirs

path, marker = sys.argv[1:3]
real = os.rename

def rename(src, dst, *args, **kwargs):  # Orbax's finalisation: the rename of its tmp directory
    if ".orbax-checkpoint-tmp" in str(src):
        with open(marker, "w") as f:
            f.write(str(src))
        time.sleep(600)  # killed here, every array written, the directory not yet renamed
    return real(src, dst, *args, **kwargs)

os.rename = rename
orbax_dirs.save(path, {"params": {"w": np.full((64, 64), 2.0, np.float32)}}, force=True)
"""


@pytest.mark.parametrize("previous", [True, False])
def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, previous):
    path = tmp_path / "ck"
    old = {"params": {"w": np.full((64, 64), 1.0, np.float32)}}
    if previous:
        orbax_dirs.save(path, old)
    (tmp_path / "child.py").write_text(textwrap.dedent(KILLED_SAVE))
    marker = tmp_path / "renaming"
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(path), str(marker)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the save never reached Orbax's finalisation: " + (
            child.communicate(timeout=60)[1][-3000:] if child.poll() is not None else "timed out")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    tmp = Path(marker.read_text())
    assert tmp.is_dir() and ".orbax-checkpoint-tmp" in tmp.name
    with pytest.raises(files.CheckpointError, match="an unfinished Orbax save"):
        orbax_dirs.load(tmp)
    if previous:
        np.testing.assert_array_equal(orbax_dirs.load(path)["params"]["w"], old["params"]["w"])
    else:
        with pytest.raises(files.CheckpointError, match="no such checkpoint directory .an unfinished save of it"):
            orbax_dirs.load(path)
    orbax_dirs.save(path, {"params": {"w": np.full((64, 64), 3.0, np.float32)}}, force=True)  # and saving goes on
    assert float(orbax_dirs.load(path)["params"]["w"][0, 0]) == 3.0


def test_a_training_state_restored_takes_the_same_step(tmp_path):
    sd = random_state_dict("resnet20", seed=4)
    model = training.flax_model("resnet20")
    tx = training.optax_optimizer(training.SGD(0.05, momentum=0.9, weight_decay=1e-4))
    step = jax.jit(training.flax_train_step(model, tx))
    rng = np.random.default_rng(0)
    x = training.flax_inputs(rng.standard_normal((4, 3, 32, 32), dtype=np.float32))
    y = rng.integers(0, 10, 4)
    state, _ = step(training.flax_state(training.flax_variables("resnet20", sd), tx), x, y)  # momentum not zero
    orbax_dirs.save(tmp_path / "state", state)
    restored = orbax_dirs.load(tmp_path / "state", like=jax.eval_shape(lambda: state))
    assert isinstance(restored, training.FlaxState)
    live, live_out = step(state, x, y)
    again, again_out = step(jax.tree.map(jax.numpy.asarray, restored), x, y)
    assert float(live_out.loss) == float(again_out.loss)
    for a, b in zip(jax.tree.leaves(live), jax.tree.leaves(again), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert files.load(tmp_path / "state").keys() == {"params", "batch_stats"}
    assert orbax_dirs.others(tmp_path / "state") == ["opt_state"]


TINY = """
import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
"""


def test_port_writes_orbax_weights_and_converts_through_them(tmp_path, monkeypatch):
    (tmp_path / "tinynet.py").write_text(textwrap.dedent(TINY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "port"
    assert main(["port", "tinynet:tiny", "--input-shape", "2,3,4,4", "--out", str(out), "--format", "orbax",
                 "--samples", "3"]) == 0
    meta = json.loads((out / "port.json").read_text())
    assert meta["weights_file"] == "variables" and (out / "variables" / "_METADATA").is_file()
    import tinynet

    sd = tinynet.tiny().state_dict()
    got = files.load(out / "variables")
    torch.save(sd, tmp_path / "ck.pt")
    assert main(["convert", str(tmp_path / "ck.pt"), str(tmp_path / "flax"), "--port", str(out),
                 "--format", "orbax"]) == 0
    for k, v in files.flatten(files.load(tmp_path / "flax")).items():
        assert np.array_equal(v, files.flatten(got)[k]), k  # the port's own weights are the module's
    assert main(["convert", str(tmp_path / "flax"), str(tmp_path / "back.pt"), "--port", str(out)]) == 0
    back = files.load(tmp_path / "back.pt")
    assert all(torch.equal(sd[k], back[k]) for k in back) and set(back) <= set(sd)
    assert os.listdir(out / "variables")
