"""benchmarks/gpu_scorers.py: its CPU path with test-size models runs and reports every scorer."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_scorers.py"


def test_gpu_scorer_benchmark_runs_on_cpu_with_tiny_models(capsys):
    spec = importlib.util.spec_from_file_location("gpu_scorers_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (
        module.main(["--device", "cpu", "--tiny", "--batch", "2", "--repeats", "1", "--image-size", "64", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [r["metric"] for r in report["rows"]] == ["clip_score", "hps_v2", "image_reward"]
    assert all(r["images_per_s"] > 0 and r["batch"] == 2 for r in report["rows"])
    assert report["fp16_autocast"] is False
