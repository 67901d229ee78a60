"""bench.py at smoke-test scale: the JSON line parses and holds the headline numbers (no timing assertions)."""
import json
import math

import torch

import bench
from utils.synthesis.simulation import make_synthesizer

REQUIRED = ("synth_samples_per_s", "train_e2e_over_bare", "detect_over_bare", "bf16_speedup")


def test_tiny_bench_prints_json_with_finite_positive_headlines(capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--tiny", "--device", "cpu", "--threads", "1", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)  # bench.main sets it for the whole process
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in REQUIRED:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    tiny = result["configs"]["tiny"]
    assert tiny["size"] == 32 and tiny["bs"] == 2
    for prec in ("fp32", "bf16"):
        assert tiny[prec]["train_e2e_img_s"] > 0 and tiny[prec]["detect_e2e_ms"] > 0
        assert tiny[prec]["tiles_per_s"] > 0 and tiny[prec]["ms_per_megapixel"] > 0  # tiled (--scale native)
    assert tiny["max_score_diff_bf16"] < 0.01


def test_synthesis_throughput_runs():
    synth = make_synthesizer("paper", None, grayscale=False)
    assert bench.synthesis_throughput(synth, batch=2, size=32, iters=1, device=torch.device("cpu")) > 0
