import json

import pytest

from parity import bench, benchrun, flops, specs
from parity.__main__ import main


def measurement(fw, loss, times=(0.1, 0.12, 0.11), model="resnet20", batch=8, size=32, mode="train"):
    job = bench.Job(model, fw, mode, batch, size)
    return bench.Measurement(job.__dict__, loss, 1.0, list(times), 2**20)


def test_same_work_accepts_agreeing_losses_and_refuses_others():
    ok, text = benchrun.same_work({"jax": measurement("jax", 2.302585), "torch-eager": measurement("torch-eager",
                                                                                                   2.302590)},
                                  "cpu", "fp32")
    assert ok and "2.302585" in text
    ok, text = benchrun.same_work({"jax": measurement("jax", 2.30), "torch-eager": measurement("torch-eager", 2.40)},
                                  "cpu", "fp32")
    assert not ok and "max relative gap" in text


def test_derived_numbers():
    m = measurement("jax", 2.3, times=[0.1, 0.2, 0.3])
    d = bench.derived(m, peak=1e12)
    assert d["median_ms"] == pytest.approx(200) and d["images_per_s"] == pytest.approx(40)
    per_image = 6 * flops.count(specs.get("resnet20"), 32).macs
    assert d["tflops"] == pytest.approx(per_image * 40 / 1e12)
    assert d["mfu"] == pytest.approx(per_image * 40 / 1e12)
    assert d["p10_ms"] < d["median_ms"] < d["p90_ms"]


@pytest.mark.slow  # two frameworks x two batch sizes, each in a fresh process
def test_bench_cli_end_to_end(tmp_path, capsys):
    code = main(["bench", "--models", "resnet20", "--batch", "4,8", "--image-size", "32", "--steps", "2",
                 "--warmup", "1", "--frameworks", "jax,torch-eager", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "settings jax:" in out and "donate_argnums" in out and "channels_last" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["framework"] for r in data["results"]} == {"jax", "torch-eager"}
    assert {r["batch"] for r in data["results"]} == {4, 8}
    assert all(r["images_per_s"] > 0 and r["peak_mem_mib"] > 0 for r in data["results"])
    assert (tmp_path / "throughput.png").exists() and (tmp_path / "batch_sweep.png").exists()


def test_bench_rejects_unknown_names():
    with pytest.raises(SystemExit, match="unknown model"):
        main(["bench", "--models", "resnet21"])
    with pytest.raises(SystemExit, match="unknown framework"):
        main(["bench", "--frameworks", "tensorflow", "--steps", "1"])
