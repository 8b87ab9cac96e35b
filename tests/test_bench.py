import json
import math

import pytest

from parity import bench, flops, specs, throughput
from parity.__main__ import main


def measurement(fw, loss, times=(0.1, 0.12, 0.11), model="resnet20", batch=8, size=32, mode="train"):
    job = throughput.Job(model, fw, mode, batch, size)
    return throughput.Measurement(job.__dict__, loss, 1.0, list(times), 2**20)


def test_same_work_accepts_agreeing_losses_and_refuses_others():
    ok, text = bench.same_work({"jax": measurement("jax", 2.302585), "torch-eager": measurement("torch-eager",
                                                                                                   2.302590)},
                                  "cpu", "fp32")
    assert ok and "2.302585" in text
    ok, text = bench.same_work({"jax": measurement("jax", 2.30), "torch-eager": measurement("torch-eager", 2.40)},
                                  "cpu", "fp32")
    assert not ok and "max relative gap" in text


def test_derived_numbers():
    m = measurement("jax", 2.3, times=[0.1, 0.2, 0.3])
    d = throughput.derived(m, peak=3e11, achievable=2e11)
    assert d["median_ms"] == pytest.approx(200) and d["images_per_s"] == pytest.approx(40)
    spec = specs.get("resnet20")
    per_image = 6 * flops.count(spec, 32).macs - 2 * flops.first_conv_macs(spec, 32)
    assert d["tflops"] == pytest.approx(per_image * 40 / 1e12)
    assert d["mfu"] == pytest.approx(per_image * 40 / 3e11)  # MFU divides by the peak, not by 1e12
    assert d["of_achievable"] == pytest.approx(per_image * 40 / 2e11)
    assert d["p10_ms"] < d["median_ms"] < d["p90_ms"]
    infer = throughput.derived(measurement("jax", 2.3, times=[0.1, 0.2, 0.3], mode="infer"), peak=3e11)
    assert infer["tflops"] == pytest.approx(2 * flops.count(spec, 32).macs * 40 / 1e12)


def test_above_the_nominal_peak_is_explained():
    peak = throughput.Peak(1e11, "nominal: test CPU")
    assert throughput.over_peak({"mfu": 0.99, "model": "m", "framework": "f"}, peak) is None
    note = throughput.over_peak({"mfu": 1.05, "model": "resnet18", "framework": "torch-eager"}, peak)
    assert "105% of the nominal peak" in note and "nominal: test CPU" in note


def test_nominal_cpu_peak_from_cpuinfo():
    info = "model name\t: Test EPYC\nflags\t\t: fpu sse avx avx2 fma\ncpu MHz\t\t: 2500.000\n"
    p = throughput.cpu_nominal_peak(info, cores=2)
    assert p.flops == pytest.approx(2 * 32 * 2.5e9) and "AVX2+FMA" in p.source and "2.50 GHz" in p.source
    p = throughput.cpu_nominal_peak(info.replace("avx2", "avx2 avx512f"), cores=4)
    assert p.flops == pytest.approx(4 * 64 * 2.5e9)
    assert math.isnan(throughput.cpu_nominal_peak("model name: x\n", cores=2).flops)  # no clock: unknown, not guessed


def test_same_work_tolerance_on_cpu_fp32_is_3e_5():
    """The stated figure, not one derived from the code under test: 3 x the fp32 floor 1e-5."""
    for gap, ok in ((2.5e-5, True), (3.5e-5, False)):
        got, _ = bench.same_work({"jax": measurement("jax", 2.0),
                                  "torch-eager": measurement("torch-eager", 2.0 * (1 + gap))}, "cpu", "fp32")
        assert got is ok, gap


def test_same_work_tolerance_is_the_parity_floor():
    """Bracketed tightly: a gap just under the tolerance passes, just over it is refused."""
    tol = bench.loss_tolerance("cpu", "fp32")
    ref = 2.0
    for gap, ok in ((0.9 * tol, True), (1.1 * tol, False)):
        got, _ = bench.same_work({"jax": measurement("jax", ref),
                                     "torch-eager": measurement("torch-eager", ref * (1 + gap))}, "cpu", "fp32")
        assert got is ok, gap


def test_tuned_xla_flags_only_for_jax_on_cpu(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    env = throughput.worker_env(throughput.Job("resnet18", "jax"))
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", *throughput.TUNED_CPU_XLA_FLAGS,
                                        *throughput.TUNED_CPU_TRAIN_XLA_FLAGS]
    # the train-step flag is for train steps only
    env = throughput.worker_env(throughput.Job("resnet18", "jax-xla", mode="infer"))
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", *throughput.TUNED_CPU_XLA_FLAGS]
    stock = throughput.Job("resnet18", "jax", xla_cpu_flags="stock")
    assert throughput.worker_env(stock)["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    assert throughput.worker_env(throughput.Job("resnet18", "torch-eager"))["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    # a user's own setting of the same flag wins
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type= --xla_backend_extra_options=")
    env = throughput.worker_env(throughput.Job("resnet18", "jax"))
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type= --xla_backend_extra_options="


@pytest.mark.slow  # two frameworks x two batch sizes, each in a fresh process
def test_bench_cli_end_to_end(tmp_path, capsys):
    code = main(["bench", "--models", "resnet20", "--batch", "4,8", "--image-size", "32", "--steps", "2",
                 "--warmup", "1", "--frameworks", "jax,jax-xla,torch-eager", "--profile", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "settings jax:" in out and "donate_argnums" in out and "channels_last" in out
    assert "conv_impl=auto" in out and "conv_impl=xla" in out
    assert "where the time goes, resnet20 b4 32px jax-xla" in out and "aten::" in out
    assert "MFU = achieved FLOP/s /" in out and "of matmul" in out
    data = json.loads((tmp_path / "throughput.json").read_text())
    assert {r["framework"] for r in data["results"]} == {"jax", "jax-xla", "torch-eager"}
    assert data["profiles"] and all(p for p in data["profiles"].values())
    assert {r["batch"] for r in data["results"]} == {4, 8}
    assert all(r["images_per_s"] > 0 and r["peak_mem_mib"] > 0 for r in data["results"])
    assert (tmp_path / "throughput.png").exists() and (tmp_path / "batch_sweep.png").exists()


@pytest.mark.slow  # torch.compile's first call compiles for about a minute on 2 cores
def test_bench_torch_compile_runs_and_does_the_same_work(tmp_path):
    code = main(["bench", "--models", "resnet20", "--batch", "4", "--image-size", "32", "--steps", "2",
                 "--warmup", "1", "--frameworks", "jax,torch-compile", "--mode", "infer", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "throughput.json").read_text())
    rows = {r["framework"]: r for r in data["results"]}
    assert rows["torch-compile"]["vs_torch_compile"] == 1.0 and rows["jax"]["images_per_s"] > 0
    assert data["settings"]["torch-compile"]["compile"] is True


def test_bench_rejects_unknown_names():
    with pytest.raises(SystemExit, match="unknown model"):
        main(["bench", "--models", "resnet21"])
    with pytest.raises(SystemExit, match="unknown framework"):
        main(["bench", "--frameworks", "tensorflow", "--steps", "1"])
