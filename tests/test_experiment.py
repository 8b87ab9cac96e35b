import json

import numpy as np
import pytest

from parity.__main__ import main
from parity.experiments import data, degradation, receptive_field


def test_digits_data_is_real_and_split():
    (x, y), (xt, yt) = data.load_digits()
    assert x.shape[1:] == (3, 8, 8) and len(x) + len(xt) == 1797
    assert set(np.unique(y)) == set(range(10))
    assert abs(float(x.mean())) < 1e-3
    (xu, _), _ = data.load_digits(upscale=2)
    assert xu.shape[1:] == (3, 16, 16)


def test_cifar_binary_reader_validates(tmp_path):
    rng = np.random.default_rng(0)
    good = np.concatenate([rng.integers(0, 10, (5, 1)), rng.integers(0, 256, (5, 3072))], axis=1).astype(np.uint8)
    for i in range(1, 6):
        good.tofile(tmp_path / f"data_batch_{i}.bin")
    with pytest.raises(data.DataError, match="test_batch.bin"):
        data.load_cifar10(tmp_path)
    good.tofile(tmp_path / "test_batch.bin")
    (x, y), (xt, yt) = data.load_cifar10(tmp_path)
    assert x.shape == (25, 3, 32, 32) and xt.shape == (5, 3, 32, 32)
    (tmp_path / "test_batch.bin").write_bytes(good.tobytes()[:-7])
    with pytest.raises(data.DataError, match="whole number"):
        data.load_cifar10(tmp_path)
    bad = good.copy()
    bad[0, 0] = 200
    bad.tofile(tmp_path / "test_batch.bin")
    with pytest.raises(data.DataError, match="label 200"):
        data.load_cifar10(tmp_path)


def test_step_decay():
    assert [degradation.lr_at(e, 8, 0.1) for e in range(8)] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    assert [degradation.lr_at(e, 8, 0.1, warmup=1) for e in range(3)] == pytest.approx([0.01, 0.1, 0.1])


def test_degradation_first_epoch_losses_agree(tmp_path, capsys):
    # one net: plain20 runs the same code (its full experiment is in docs/results.md)
    code = main(["experiment", "degradation", "--nets", "resnet20", "--epochs", "2", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "degradation.json").read_text())
    for name in ("resnet20",):
        r = data["results"][name]
        assert r["train_loss_rel_diff"][0] < 0.01  # the experiment's bound: within 1% for the first epoch
        # the float64 twins run the first epoch only, and agree far inside the bound on these nets
        assert len(r["float64_rel_diff"]) == 1 and r["float64_rel_diff"][0] < 1e-9
        assert set(r["float32_to_float64"]) == {"torch", "flax"}
        assert len(r["torch_float64_ulp"]["train_loss"]) == 1 and r["torch_float64_ulp_rel_diff"][0] < 1e-6
        assert len(r["torch"]["test_error"]) == len(r["flax"]["test_error"]) == 2
        # the yardstick is a real second run: a one-ulp start moves the float32 curve, a little
        assert 0 < r["torch_ulp_rel_diff"][0] < 0.01
        assert set(r["seconds"]) == {"torch, stock", "torch, channels_last", "torch, 1 thread", "torch, 1-ulp start",
                                     "flax", "torch, float64", "flax, float64", "torch, float64, 1-ulp start"}
        assert all(s > 0 for s in r["seconds"].values())
    assert (tmp_path / "degradation.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "native 8x8" in out and "t/t(1 ulp)" in out
    assert "float64 twins within 1%: PASS" in out and "seconds per run" in out


def test_degradation_fails_when_the_float64_twins_disagree(tmp_path, monkeypatch, capsys):
    # the verdict's logic only: stand-in runs whose float64 Flax epoch is 2% off
    def fake(flax_offset):
        def train(name, weights, data, epochs, *a, dtype="float32", run_epochs=None, **kw):
            loss = 2.0 * (1 + (flax_offset if dtype == "fp64" else 0.001))
            n = epochs if run_epochs is None else run_epochs
            return {"train_loss": [loss] * n, "train_error": [0.5] * n, "test_error": [0.5] * n}
        return train

    monkeypatch.setattr(degradation, "train_torch", fake(0.0))
    monkeypatch.setattr(degradation, "train_flax", fake(0.02))
    code = main(["experiment", "degradation", "--nets", "resnet20,plain20", "--epochs", "2", "--out",
                 str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL: resnet20, plain20" in out
    monkeypatch.setattr(degradation, "train_flax", fake(0.009))  # within the bound
    assert main(["experiment", "degradation", "--nets", "resnet20", "--epochs", "2", "--out", str(tmp_path)]) == 0


def test_band_and_outside_arithmetic():
    runs = [{"train_loss": [1.0, 0.5], "test_error": [0.5, 0.2]}, {"train_loss": [1.2, 0.4], "test_error": [0.4, 0.2]}]
    assert degradation.band(runs, "train_loss") == ([1.0, 0.4], [1.2, 0.5])
    # 1.5 is 0.3 above a band 0.2 wide: 1.5 widths; inside is 0
    assert degradation.outside([1.5, 0.45], [1.0, 0.4], [1.2, 0.5], "train_loss") == pytest.approx([1.5, 0.0])
    # a band of identical curves has the floor as its width: 2 points of test error
    assert degradation.outside([0.23], [0.2], [0.2], "test_error") == pytest.approx([1.5])
    v = degradation.band_verdict({"train_loss": [1.1, 0.45], "test_error": [0.9, 0.9]}, runs)
    assert v["train_loss"]["ok"] and not v["test_error"]["ok"] and v["test_error"]["fraction"] == 1.0


@pytest.mark.parametrize("epochs_outside, ok", [(2, True), (3, False)])
def test_band_fails_when_more_than_a_quarter_of_the_epochs_are_outside(epochs_outside, ok):
    """8 epochs, Flax more than one band width outside in 2 (a quarter: passes) or 3 (fails)."""
    runs = [{"train_loss": [1.0] * 8, "test_error": [0.5] * 8}, {"train_loss": [1.2] * 8, "test_error": [0.6] * 8}]
    loss = [1.1] * 8
    for i in range(epochs_outside):
        loss[i] = 1.7  # 0.5 above a band 0.2 wide: 2.5 widths
    v = degradation.band_verdict({"train_loss": loss, "test_error": [0.55] * 8}, runs)
    assert v["train_loss"]["fraction"] == epochs_outside / 8 and v["train_loss"]["ok"] is ok
    assert v["test_error"]["ok"]


def test_rounding_variants_switch_only_what_they_name():
    import torch

    threads = torch.get_num_threads()
    with degradation.rounding("oneDNN off"):
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled
    with degradation.rounding("1 thread"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="variant must be one of"):
        degradation.rounding("fast math").__enter__()


def test_degradation_fails_when_flax_leaves_torchs_band(tmp_path, monkeypatch, capsys):
    """The band verdict's logic on stand-in runs: torch's variants spread by 1%; a Flax test error
    inside the band passes, one 10 points above it in every epoch fails (what a stale running
    statistic does to eval mode)."""
    variant = {"v": 0}

    def torch_run(name, weights, data, epochs, *a, dtype="fp32", run_epochs=None, **kw):
        n = epochs if run_epochs is None else run_epochs
        variant["v"] += 1
        d = 0.01 * (variant["v"] % 4)
        return {"train_loss": [2.0 + d] * n, "train_error": [0.5 + d] * n, "test_error": [0.5 + d] * n}

    def flax_run(offset):
        def run(name, weights, data, epochs, *a, dtype="fp32", run_epochs=None, **kw):
            n = epochs if run_epochs is None else run_epochs
            return {"train_loss": [2.01] * n, "train_error": [0.51] * n, "test_error": [0.51 + offset] * n}
        return run

    monkeypatch.setattr(degradation, "train_torch", torch_run)
    monkeypatch.setattr(degradation, "train_flax", flax_run(0.0))
    args = ["experiment", "degradation", "--nets", "resnet20", "--epochs", "3", "--no-float64", "--out", str(tmp_path)]
    assert main(args) == 0
    monkeypatch.setattr(degradation, "train_flax", flax_run(0.10))
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "leave torch's band: FAIL: resnet20" in out and "0/3, 3/3" in out


def test_chaotic_nets_are_shown_against_the_band_not_judged(tmp_path, monkeypatch, capsys):
    """A net whose float64 first epoch moves when torch starts one ulp away is chaotic: Flax outside
    the band does not fail it. The same runs with a steady float64 torch fail."""
    calls = {"n": 0}

    def torch_run(chaotic):
        def run(name, weights, data, epochs, *a, dtype="fp32", run_epochs=None, **kw):
            n = epochs if run_epochs is None else run_epochs
            calls["n"] += 1
            d = 0.01 * (calls["n"] % 4) if dtype == "fp32" or chaotic else 0.0
            return {"train_loss": [2.0 + d] * n, "train_error": [0.5 + d] * n, "test_error": [0.5 + d] * n}
        return run

    def flax_run(name, weights, data, epochs, *a, dtype="fp32", run_epochs=None, **kw):
        n = epochs if run_epochs is None else run_epochs
        loss = 2.0 + (0.01 if dtype == "fp64" else 0.3)  # float32: far outside torch's band
        return {"train_loss": [loss] * n, "train_error": [0.5] * n, "test_error": [0.5] * n}

    args = ["experiment", "degradation", "--nets", "resnet20", "--epochs", "3", "--out", str(tmp_path)]
    monkeypatch.setattr(degradation, "train_flax", flax_run)
    monkeypatch.setattr(degradation, "train_torch", torch_run(True))
    assert main(args) == 0
    assert "not judged: chaotic" in capsys.readouterr().out
    assert json.loads((tmp_path / "degradation.json").read_text())["results"]["resnet20"]["chaotic"]
    calls["n"] = 0
    monkeypatch.setattr(degradation, "train_torch", torch_run(False))
    assert main(args) == 1
    assert "leave torch's band: FAIL: resnet20" in capsys.readouterr().out


def test_receptive_field_table(capsys):
    assert main(["experiment", "receptive-field", "--channels", "8", "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "2 x 3x3  5x5" in out and "3 x 3x3  7x7" in out
    rows = receptive_field.stack_table(8, 8)
    assert rows[1][3] == "18" and rows[2][3] == "25" and rows[3][3] == "27" and rows[4][3] == "49"
