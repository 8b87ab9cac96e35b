"""What keeps a check small (docs/parity.md, "What a check holds"): the float64 reference store
(parity.check.reference), the runners' one-tensor-at-a-time quantities, the starts made at each load and
the train step read between its halves: each gives the numbers the engine gave before."""

from __future__ import annotations

import gc
import glob
import os
import tempfile
import warnings
import weakref

import numpy as np
import pytest

from parity.check import reference, runners, statistics


def stream(rng):
    big = rng.standard_normal((300, 40))  # 96 kB: spilled
    yield "eval", {"logits": rng.standard_normal((2, 3))}
    yield "counters", {"bn.num_batches_tracked": 3}
    yield "grads", {"w": big, "b": -7.0 * np.ones(4)}


def test_large_tensors_go_to_disk_and_come_back_as_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the directory it chose
    rng = np.random.default_rng(0)
    expect = dict(stream(np.random.default_rng(0)))
    with reference.Reference.collect(stream(rng)) as ref:
        (d,) = glob.glob(str(tmp_path / "parity-reference-*"))
        assert len(os.listdir(d)) == 1  # "w" alone: the logits and the bias are small
        assert ref.counters == {"bn.num_batches_tracked": 3}
        assert list(ref["grads"]) == ["w", "b"] and "w" in ref["grads"] and "x" not in ref["grads"]
        np.testing.assert_array_equal(ref["grads"]["w"], expect["grads"]["w"])
        assert ref["grads"].scale == 7.0 and ref["eval"].scale == np.abs(expect["eval"]["logits"]).max()
        # the judgement's numbers are those of the same quantities held in memory, bit for bit
        got = {"w": expect["grads"]["w"] + 1e-9, "b": expect["grads"]["b"]}
        assert statistics.distance(got, ref["grads"]) == statistics.distance(got, expect["grads"])
        assert statistics.struct_errors(got, ref["grads"]) == statistics.struct_errors(got, expect["grads"])
    assert not os.path.exists(d)


def test_a_failing_run_leaves_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)

    def broken():
        yield from stream(np.random.default_rng(0))
        raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError, match="the run failed"):
        reference.Reference.collect(broken())
    assert not glob.glob(str(tmp_path / "parity-reference-*"))


def test_the_start_is_held_on_disk_and_read_fresh(tmp_path, monkeypatch):
    """``stored_start``: every tensor back bit for bit (dtype and key order too), a fresh tensor at each
    read (a run may write over it), and the directory gone when the block ends, also on an error."""
    import torch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    w = {"conv.weight": torch.randn(64, 3, 3, 3, dtype=torch.float64), "fc.weight": torch.randn(300, 40,
                                                                                                 dtype=torch.float64),
         "bn.num_batches_tracked": torch.tensor(7)}
    with reference.stored_start(w) as start:
        assert list(start) == list(w) and glob.glob(str(tmp_path / "parity-reference-*"))
        for k, v in w.items():
            assert start[k].dtype == v.dtype and torch.equal(start[k], v), k
        a = start["fc.weight"]
        a.zero_()
        assert torch.equal(start["fc.weight"], w["fc.weight"])  # written over: the store is untouched
    assert not glob.glob(str(tmp_path / "parity-reference-*"))
    with pytest.raises(RuntimeError, match="planted"), reference.stored_start(w):
        raise RuntimeError("planted")
    assert not glob.glob(str(tmp_path / "parity-reference-*"))
    # the point of it: once the caller lets go, its copy of a large tensor is gone for the whole block
    held = weakref.ref(w["fc.weight"])
    with reference.stored_start(w):
        del w
        gc.collect()
        assert held() is None


def test_a_full_disk_keeps_the_reference_in_memory_with_a_warning(tmp_path, monkeypatch):
    """No room on the disk (too little free beyond the reserve, or the write itself failing for space):
    the tensor stays in memory, the same numbers, nothing half-written left behind; the check says so."""
    import torch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    expect = dict(stream(np.random.default_rng(0)))
    save = np.save

    def full(path, value, **kw):  # as numpy fails on a full disk: part of the file is written
        save(path, value[:1], **kw)
        raise OSError(f"Not enough free space to write {value.nbytes} bytes after offset 128")

    monkeypatch.setattr(np, "save", full)
    with pytest.warns(RuntimeWarning, match=r"grads/w.*stays in memory.*TMPDIR"), \
            reference.Reference.collect(stream(np.random.default_rng(0))) as ref:
        (d,) = glob.glob(str(tmp_path / "parity-reference-*"))
        assert os.listdir(d) == []
        np.testing.assert_array_equal(ref["grads"]["w"], expect["grads"]["w"])
        assert ref.held_in_memory == expect["grads"]["w"].nbytes
    # too little free: no write is tried at all
    monkeypatch.setattr(np, "save", lambda *a, **k: pytest.fail("wrote to a full disk"))
    monkeypatch.setattr(reference, "DISK_RESERVE_BYTES", 1 << 62)
    with pytest.warns(RuntimeWarning, match="stays in memory"), reference.stored_start(
            {"w": torch.from_numpy(expect["grads"]["w"])}) as start:
        np.testing.assert_array_equal(start["w"].numpy(), expect["grads"]["w"])
        assert start.held_in_memory == expect["grads"]["w"].nbytes


def test_a_disk_that_refuses_for_another_reason_names_the_tensor_and_the_remedy(monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(np, "save", denied)
    with pytest.raises(OSError, match=r"grads/w .*Permission denied.*set TMPDIR"):
        reference.Reference.collect(stream(np.random.default_rng(0)))


def test_runner_quantities_are_made_per_access_and_may_be_written_over():
    calls = []
    live = {"a": np.arange(3.0), "b": np.ones(2)}

    def fetch(k):
        calls.append(k)
        return live[k].copy()

    t = runners.LiveTensors(live, fetch)
    assert "a" in t and "c" not in t and list(t) == ["a", "b"] and calls == []  # membership reads nothing
    ref = {"a": np.zeros(3), "b": np.ones(2)}
    assert statistics.distance(t, ref) == statistics.distance(live, ref)
    assert calls == ["a", "b"]  # each tensor made once
    assert statistics.struct_errors(t, ref) == statistics.struct_errors(live, ref)
    np.testing.assert_array_equal(live["a"], np.arange(3.0))  # the live tensors themselves untouched
    with pytest.raises(KeyError):
        t["c"]


def test_starts_are_made_as_the_engine_made_them_before():
    """A ``Start`` is made again at each load: the same weights each time, equal to casting then
    perturbing (what the engine held before)."""
    import torch

    from parity.check import weights

    w64 = {"a": torch.randn(5, 3, dtype=torch.float64), "n": torch.tensor(7)}
    s = weights.Start(w64, 3, fp32=True)
    one, two = s.weights(), s.weights()
    want = weights.perturbed({k: v.float() if v.is_floating_point() else v for k, v in w64.items()}, 3)
    assert all(torch.equal(one[k], want[k]) and torch.equal(two[k], want[k]) for k in want)
    assert one["a"].dtype == torch.float32 and s.held and not weights.Start(w64, 0).held
    assert weights.weights_of(weights.Start(w64)) is w64 and weights.for_run(weights.Start(w64, 1)) is not w64


def test_the_train_step_in_two_halves_is_the_train_step():
    """The check reads gradients between ``torch_backward`` and the update; a whole
    ``torch_train_step`` takes the same step, bit for bit."""
    import copy

    import torch

    from parity import training

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    b = copy.deepcopy(a)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    sgd = training.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    oa, ob = training.torch_optimizer(sgd, a.parameters()), training.torch_optimizer(sgd, b.parameters())
    for _ in range(3):
        la, _ = training.torch_train_step(a, oa, x, y)
        ob.zero_grad(set_to_none=True)
        lb, _ = training.torch_backward(b, x, y)
        ob.step()
        assert la.item() == lb.item()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_check_kept_in_memory_gives_the_numbers_it_gives_on_disk(monkeypatch):
    """The disk's room decides only where the float64 reference lives: verdicts, every distance and
    layer, bit for bit; the settings say where it was."""
    import dataclasses
    import warnings

    from parity.check import check

    on_disk = check("resnet20", steps=1, samples=1, batch=2)
    monkeypatch.setattr(reference, "DISK_RESERVE_BYTES", 1 << 62)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        in_memory = check("resnet20", steps=1, samples=1, batch=2)
    assert any("stays in memory" in str(w.message) for w in caught)
    assert on_disk.settings["float64 reference held"] == "on disk (TMPDIR)"
    assert in_memory.settings["float64 reference held"].startswith("on disk (TMPDIR), ")
    assert "GiB in memory: the disk had no room" in in_memory.settings["float64 reference held"]
    assert [dataclasses.asdict(v) for v in in_memory.verdicts] == [dataclasses.asdict(v) for v in on_disk.verdicts]
    assert in_memory.layers == on_disk.layers and in_memory.passed and on_disk.passed


LAYOUTS = [("copy", (7, 5)), ("linear", (9, 6)), ("conv", (6, 4, 3, 3)), ("conv1d", (5, 2, 3)),
           ("linear_chw", (6, 4 * 3 * 2)), ("conv_transpose", (4, 6, 3, 3)), ("conv_transpose1d", (4, 6, 3)),
           ("permute", (4, 1, 1)), ("linear_chw", (0, 4 * 3 * 2))]  # the last: a zero-sized axis


def _layout(name: str):
    from parity.convert.rules import Layout

    kind = name.removesuffix("1d")
    return Layout(kind, chw=(4, 3, 2) if kind == "linear_chw" else None, axes=(1, 2, 0) if kind == "permute" else None)


@pytest.mark.parametrize("layout, shape", LAYOUTS)
def test_torch_rows_are_the_rows_of_the_whole_move(layout, shape):
    """``Layout.torch_rows``: rows s:e of a Flax tensor in torch's layout, read from the slice that holds
    them, equal to the same rows of the whole move (None where rows are spread otherwise)."""
    lay = _layout(layout)
    flax = lay.flax_copy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    whole = lay.torch_copy(flax, np.float64)
    for s, e in [(0, 1), (1, 4), (3, shape[0]), (0, shape[0])]:
        rows = lay.torch_rows(flax, s, e, np.float64)
        if lay.kind in ("conv_transpose", "permute"):
            assert rows is None
            continue
        assert rows.dtype == np.float64 and rows.flags.c_contiguous
        np.testing.assert_array_equal(rows, whole[s:e])


@pytest.mark.parametrize("layout, shape", LAYOUTS)
def test_each_layouts_moves_undo_each_other(layout, shape):
    """``Layout.flax_copy`` then ``torch_copy`` (one permutation each way, ``Layout.moved``) gives the
    torch tensor back, element for element and shape for shape, and ``to_flax`` is ``flax_copy``."""
    lay = _layout(layout)
    torch_side = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    flax_side = lay.flax_copy(torch_side)
    assert (lay.kind in ("copy", "permute") or torch_side.size == 0
            or not np.array_equal(lay.torch_copy(flax_side).ravel(), flax_side.ravel()))
    assert flax_side.flags.c_contiguous and flax_side.shape == lay.flax_shape(shape)
    np.testing.assert_array_equal(lay.to_flax(torch_side), flax_side)
    np.testing.assert_array_equal(lay.torch_copy(flax_side), torch_side)
    np.testing.assert_array_equal(lay.to_torch(flax_side), torch_side)


@pytest.mark.parametrize("layout, shape", LAYOUTS)
def test_torch_and_numpy_write_each_layouts_moves_alike(layout, shape, monkeypatch):
    """Large tensors are moved by torch's copy (``rules._written``), small ones by numpy's: every layout's
    moves both ways, its row reads, and the float64 -> float32 cast the same to the last bit on both."""
    from parity.convert import rules

    lay = _layout(layout)
    torch_side = np.random.default_rng(2).standard_normal(shape)  # float64: its cast to float32 rounds
    flax_side = lay.flax_copy(torch_side, np.float32)

    def moves():
        return [lay.flax_copy(torch_side), lay.flax_copy(torch_side, np.float32), lay.torch_copy(flax_side),
                lay.torch_copy(flax_side, np.float64)] + [lay.torch_rows(flax_side, s, e, np.float64)
                                                          for s, e in [(0, 1), (1, shape[0])]]
    by_numpy = moves()
    calls = []
    real = rules._written
    monkeypatch.setattr(rules, "_TORCH_COPY_MIN", 0)
    monkeypatch.setattr(rules, "_written", lambda v, d: calls.append(v.size) or real(v, d))
    by_torch = moves()
    assert calls  # the moves went through the copy that now takes torch's path
    for n, t in zip(by_numpy, by_torch, strict=True):
        assert (n is None) == (t is None)
        if n is not None:
            assert n.dtype == t.dtype and n.shape == t.shape and t.flags.c_contiguous
            np.testing.assert_array_equal(n, t)


def test_the_torch_copy_is_taken_for_large_tensors_and_read_only_ones(monkeypatch):
    """A tensor of ``_TORCH_COPY_MIN`` elements or more, even read-only (a memory-mapped reference), is
    written by torch, silently, and equals numpy's copy; a flipped view (negative strides) and a small
    tensor stay with numpy."""
    import torch

    from parity.convert import rules

    read = []
    real = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda x: read.append(x.shape) or real(x))
    a = np.arange(rules._TORCH_COPY_MIN, dtype=np.float64).reshape(1024, -1) + 0.1
    a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = rules._written(a.T, np.float32)
    assert read == [a.T.shape, a.T.shape]  # the output and the view, both through torch
    np.testing.assert_array_equal(out, np.array(a.T, np.float32))
    np.testing.assert_array_equal(rules._written(a[::-1], None), a[::-1])
    np.testing.assert_array_equal(rules._written(a[:2, :3].T, None), a[:2, :3].T)
    assert len(read) == 2


def test_large_tensors_are_compared_in_row_blocks_with_the_numbers_of_whole_ones(monkeypatch):
    """A runner's tensor larger than ``BLOCK_BYTES`` is read and compared in row blocks
    (``LiveTensors.rows``), never whole: the same max errors bit for bit, the same distance to rounding
    of its sum; a block of the wrong shape falls back to the whole tensor (and its inf)."""
    monkeypatch.setattr(statistics, "BLOCK_BYTES", 800)  # 100 float64s: a 30 x 20 tensor in 6 blocks
    rng = np.random.default_rng(1)
    live = {"w": rng.standard_normal((30, 20)), "v": rng.standard_normal((3, 2)), "s": np.array([2.0])}
    ref = reference.StoredTensors()
    for k, v in live.items():
        ref.add(k, v + 1e-3 * rng.standard_normal(v.shape), None)
    whole, blocks = [], []

    def fetch(k):
        whole.append(k)
        return live[k].copy()

    def rows(k, s, e):
        blocks.append((k, s, e))
        return live[k][s:e].copy()

    t = runners.LiveTensors(live, fetch, rows)
    plain = {k: v.copy() for k, v in live.items()}
    want_struct, want_dist = statistics.struct_errors(plain, ref), statistics.distance(plain, ref)
    assert statistics.struct_errors(t, ref) == want_struct
    assert "w" not in whole and [b for b in blocks if b[0] == "w"] == [("w", s, s + 5) for s in range(0, 30, 5)]
    whole.clear(), blocks.clear()
    assert statistics.distance(t, ref) == pytest.approx(want_dist, rel=1e-13)
    assert "w" not in whole and len(blocks) == 6 and sorted(whole) == ["s", "v"]
    np.testing.assert_array_equal(live["w"], plain["w"])  # the live tensor untouched
    # the stored sum of squares is the one a distance took from the tensor itself
    assert ref.sumsq("w") == float(np.vdot(np.asarray(ref["w"]), np.asarray(ref["w"])))

    wrong = runners.LiveTensors({"w": live["w"][:, :10]}, lambda k: live["w"][:, :10].copy(),
                                lambda k, s, e: live["w"][s:e, :10].copy())
    assert statistics.distance(wrong, {"w": ref["w"]}) == float("inf")
    assert statistics.struct_errors(wrong, {"w": np.asarray(ref["w"])})["w"] == float("inf")


def test_the_check_steps_torch_with_its_fused_optimizers_as_the_default_ones():
    """``torch_optimizer(fused=True)`` (the check's): torch's fused kernels, and the same trajectory as
    torch's default implementation to rounding (float64: 1e-14 after 5 steps)."""
    import torch

    from parity import training

    for opt in (training.SGD(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
                training.AdamW(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2)):
        g = torch.Generator().manual_seed(0)
        start = torch.randn(50, 40, generator=g, dtype=torch.float64)
        grads = [torch.randn(50, 40, generator=g, dtype=torch.float64) for _ in range(5)]
        ends = []
        for fused in (False, True):
            p = torch.nn.Parameter(start.clone())
            o = training.torch_optimizer(opt, [p], fused=fused)
            assert o.defaults.get("fused") is (True if fused else None)
            for gr in grads:
                p.grad = gr.clone()
                o.step()
            ends.append(p.detach())
        assert not torch.equal(ends[1], start)
        torch.testing.assert_close(ends[1], ends[0], rtol=1e-14, atol=1e-14)


def test_parity_check_asks_torch_for_huge_pages_unless_told_otherwise():
    """``parity check`` sets torch's own ``THP_MEM_ALLOC_ENABLE=1`` before torch loads; a user's value
    stands, and once torch is loaded nothing is set (it would no longer apply)."""
    import subprocess
    import sys

    code = ("import os, sys\n{pre}from parity.cli.check import huge_pages_for_torch\n"
            "huge_pages_for_torch(); print(os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def value(pre="", **extra):
        return subprocess.run([sys.executable, "-c", code.format(pre=pre)], env={**env, **extra},
                              capture_output=True, text=True, timeout=120, check=True).stdout.strip()

    assert value() == "1"
    assert value(THP_MEM_ALLOC_ENABLE="0") == "0"
    assert value(pre="sys.modules['torch'] = object()\n") == "None"


def test_parity_check_asks_malloc_for_huge_pages_unless_told_otherwise(monkeypatch, tmp_path):
    """``parity check`` adds ``glibc.malloc.hugetlb=1`` to ``GLIBC_TUNABLES`` (kept: a user's other
    tunables), once; a user's own hugetlb value stands; nothing where glibc is older than 2.35 or the
    kernel gives no transparent huge pages."""
    from parity.cli import check as cli_check

    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    monkeypatch.setattr(cli_check, "THP_ENABLED", thp)
    monkeypatch.setattr(cli_check, "_glibc_at_least", lambda major, minor: True)
    env = cli_check.malloc_huge_pages_env
    assert env({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "PARITY_CHECK_MALLOC_REEXEC": "1"}
    assert env({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})["GLIBC_TUNABLES"] == \
        "glibc.pthread.rseq=0:glibc.malloc.hugetlb=1"
    assert env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert env({"PARITY_CHECK_MALLOC_REEXEC": "1"}) is None  # the second run: no third
    thp.write_text("always madvise [never]\n")
    assert env({}) is None
    thp.unlink()
    assert env({}) is None
    thp.write_text("[always] madvise never\n")
    monkeypatch.setattr(cli_check, "_glibc_at_least", lambda major, minor: False)
    assert env({}) is None


def test_glibc_version_is_read_not_assumed(monkeypatch):
    from parity.cli import check as cli_check

    for text, ok in (("glibc 2.36", True), ("glibc 2.35", True), ("glibc 2.34", False), ("glibc 3.0", True),
                     ("musl 1.2", False)):
        monkeypatch.setattr(os, "confstr", lambda name, text=text: text, raising=False)
        assert cli_check._glibc_at_least(2, 35) is ok, text
    monkeypatch.delattr(os, "confstr", raising=False)
    assert cli_check._glibc_at_least(2, 35) is False


def test_parity_check_runs_itself_again_with_malloc_huge_pages(tmp_path, monkeypatch):
    """End to end: ``python -m parity check`` starts, runs itself again (the same command line) with the
    tunable, and only once; the report's settings say so. A ``sitecustomize`` prints each start's
    ``GLIBC_TUNABLES``."""
    import subprocess
    import sys

    from parity.check import engine
    from parity.cli.check import malloc_huge_pages_env

    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PARITY_CHECK_MALLOC_REEXEC")}
    if malloc_huge_pages_env(clean) is None:
        pytest.skip("this machine's glibc or kernel gives malloc no huge pages")
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nprint('START', os.environ.get('GLIBC_TUNABLES', '-'), file=sys.stderr)\n")
    path = os.pathsep.join([str(tmp_path), *filter(None, [clean.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "parity", "check", "--models", "resnet20", "--estimate"],
                          env={**clean, "PYTHONPATH": path}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    starts = [ln for ln in proc.stderr.splitlines() if ln.startswith("START")]
    assert starts == ["START -", "START glibc.malloc.hugetlb=1"], proc.stderr[-2000:]
    assert "resnet20: estimate" in proc.stdout
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert engine._malloc_huge_pages().startswith("on")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    assert engine._malloc_huge_pages().startswith("off")


def test_parity_main_called_by_a_program_never_runs_itself_again(monkeypatch, capsys):
    """``main(argv)`` from a caller's process (a test, a notebook) must not replace that process."""
    import parity.__main__ as entry

    def refuse(*a, **k):
        raise AssertionError("os.execve called from main(argv)")

    monkeypatch.setattr(os, "execve", refuse)
    monkeypatch.delenv("PARITY_CHECK_MALLOC_REEXEC", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert entry.main(["check", "--models", "resnet20", "--estimate"]) == 0
    assert "resnet20: estimate" in capsys.readouterr().out
