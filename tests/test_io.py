import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity.convert import arrays, files


def state_dict():
    return OrderedDict([("conv1.weight", torch.randn(4, 3, 3, 3)), ("bn1.running_var", torch.rand(4)),
                        ("bn1.num_batches_tracked", torch.tensor(7))])


def tree():
    return {"params": {"conv1": {"kernel": np.random.rand(3, 3, 3, 4).astype(np.float32)}},
            "batch_stats": {"bn1": {"var": np.ones(4, np.float32), "num_batches_tracked": np.array(7, np.int32)}}}


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert arrays.to_numpy(a).tobytes() == arrays.to_numpy(b).tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k])
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".pth"])
def test_state_dict_round_trip(tmp_path, ext):
    sd = state_dict()
    files.save(tmp_path / f"m{ext}", sd)
    back = files.load(tmp_path / f"m{ext}")
    assert isinstance(back, OrderedDict) and list(back) == list(sd)
    for k in sd:
        assert_same(sd[k], back[k])


@pytest.mark.parametrize("ext", [".safetensors", ".msgpack"])
def test_tree_round_trip(tmp_path, ext):
    t = tree()
    files.save(tmp_path / f"v{ext}", t)
    back = files.load(tmp_path / f"v{ext}")
    assert_same(t, back)
    assert isinstance(back["params"]["conv1"]["kernel"], np.ndarray)


def test_kind_and_format_mismatches_are_refused(tmp_path):
    with pytest.raises(files.CheckpointError, match=".pt/.pth file holds a torch state_dict"):
        files.save(tmp_path / "v.pt", tree())
    with pytest.raises(files.CheckpointError, match=".msgpack file holds Flax variables"):
        files.save(tmp_path / "m.msgpack", state_dict())
    with pytest.raises(files.CheckpointError, match="unknown checkpoint extension '.h5'"):
        files.save(tmp_path / "m.h5", state_dict())
    with pytest.raises(files.CheckpointError, match="no such checkpoint"):
        files.load(tmp_path / "absent.safetensors")
    assert not list(tmp_path.iterdir())


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/parity_pickle_ran")


@pytest.mark.parametrize("payload", ["bare", "inside_state_dict"])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, payload):
    MARKER.unlink(missing_ok=True)
    obj = Exploit() if payload == "bare" else {"w": torch.ones(1), "x": Exploit()}
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save(obj, f)
    with pytest.raises(files.CheckpointError, match="not a readable torch checkpoint"):
        files.load(path)
    assert not MARKER.exists()
    # the plain pickle protocol too, not only torch's zip container
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(files.CheckpointError):
        files.load(path)
    assert not MARKER.exists()


def test_non_tensor_torch_file_is_refused(tmp_path):
    torch.save({"w": torch.ones(1), "epoch": 3}, tmp_path / "m.pt")
    with pytest.raises(files.CheckpointError, match="non-tensor values"):
        files.load(tmp_path / "m.pt")
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, tmp_path / "c.pt")
    assert list(files.load(tmp_path / "c.pt")) == ["w"]  # a training checkpoint's state_dict is taken


def _valid_bytes(tmp_path, ext):
    obj = tree() if ext == ".msgpack" else state_dict()
    files.save(tmp_path / f"ok{ext}", obj)
    return (tmp_path / f"ok{ext}").read_bytes()


@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".msgpack"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "half_zeroed"])
def test_damaged_files_raise_checkpoint_error(tmp_path, ext, damage):
    good = _valid_bytes(tmp_path, ext)
    rng = np.random.default_rng(0)
    data = {"empty": b"", "truncated": good[: len(good) // 2], "random": rng.bytes(len(good)),
            "half_zeroed": good[:16] + bytes(len(good) - 16)}[damage]
    path = tmp_path / f"bad{ext}"
    path.write_bytes(data)
    with pytest.raises(files.CheckpointError):
        files.load(path)


def test_oversized_safetensors_header(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b'{"a":1}')
    with pytest.raises(files.CheckpointError):
        files.load(path)
    path.write_bytes(struct.pack("<Q", 7) + b'{"a":1}')  # a header that is not a tensor table
    with pytest.raises(files.CheckpointError):
        files.load(path)


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_nonfinite_weights_are_named(tmp_path, ext):
    sd = state_dict()
    sd["conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["bn1.running_var"][1] = float("inf")
    files.save(tmp_path / f"m{ext}", sd)
    with pytest.raises(files.CheckpointError, match=r"2 tensor\(s\): conv1.weight, bn1.running_var"):
        files.load(tmp_path / f"m{ext}")
    assert torch.isnan(files.load(tmp_path / f"m{ext}", allow_nonfinite=True)["conv1.weight"]).any()


def test_nonfinite_in_tree_is_named(tmp_path):
    t = tree()
    t["params"]["conv1"]["kernel"][0, 0, 0, 0] = np.inf
    files.save(tmp_path / "v.msgpack", t)
    with pytest.raises(files.CheckpointError, match="params/conv1/kernel"):
        files.load(tmp_path / "v.msgpack")


@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".msgpack"])
def test_failed_save_leaves_previous_file_intact(tmp_path, ext, monkeypatch):
    obj = (lambda: tree()) if ext == ".msgpack" else state_dict
    path = tmp_path / f"m{ext}"
    files.save(path, obj())
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(files.os, "fsync", crash)  # dies after the temp file was written
    with pytest.raises(OSError, match="simulated"):
        files.save(path, obj())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_unserializable_leaf_fails_before_touching_the_file(tmp_path):
    path = tmp_path / "v.safetensors"
    files.save(path, tree())
    before = path.read_bytes()
    with pytest.raises(files.CheckpointError, match="leaf 'params/x' is a str"):
        files.save(path, {"params": {"x": "not an array"}})
    assert path.read_bytes() == before


DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int32", "int64", "uint8", "bool"]


def _np_dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


@st.composite
def arrays_st(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    dtype = _np_dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**32 - 1))
    raw = np.random.default_rng(seed).bytes(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    a = np.frombuffer(raw, np.uint8).copy().view(dtype).reshape(shape) if dtype.kind != "b" else \
        (np.frombuffer(raw, np.uint8) % 2).astype(bool).reshape(shape)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        a = np.where(np.isfinite(a.astype(np.float64)), a, np.zeros((), dtype)).astype(dtype)
    return a


names = st.text("abcxyz_0123456789", min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leaves=st.dictionaries(names, arrays_st(), min_size=1, max_size=4))
def test_property_round_trip_every_format(tmp_path, leaves):
    sd = OrderedDict((f"m.{k}", arrays.to_torch(v)) for k, v in leaves.items())
    t = {"params": {k: v for k, v in leaves.items()}}
    for ext, obj in [(".safetensors", sd), (".pt", sd), (".safetensors", t), (".msgpack", t)]:
        path = tmp_path / f"x{ext}"
        files.save(path, obj)
        assert_same(obj, files.load(path))
