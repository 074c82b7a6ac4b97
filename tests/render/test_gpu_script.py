"""The GPU benchmark's CPU dry path runs end to end (the CUDA path is the same code at full size)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_render.py"


@pytest.mark.slow
def test_gpu_render_dry_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_render", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "report.json"
    assert mod.main(["--device", "cpu", "--tiny", "--repeats", "1", "--steps", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [f["family"] for f in report["families"]] == ["sd1", "sdxl"]
    assert all(f["bare_s"] > 0 and f["diffagent_denoise_s"] > 0 for f in report["families"])
    assert all(x > 0 for x in report["switch"]["switch_reload_s"])
    assert all(lo["checkpoint_reloads"] == 0 for lo in report["lora"].values())
    assert "overhead" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_render_flow_dry_run(tmp_path, capsys):
    """``--only-flow`` on CPU: FLUX.1 and SD 3 render through the renderer without offload (CPU ignores it), and a
    transformer LoRA changes the image without reloading the checkpoint."""
    spec = importlib.util.spec_from_file_location("gpu_render", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "report.json"
    assert (
        mod.main(["--device", "cpu", "--tiny", "--only-flow", "--repeats", "1", "--steps", "2", "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert "families" not in report and list(report["flow"]) == ["flux", "sd3"]
    for res in report["flow"].values():
        assert res["steps"] == 2 and res["size"] == 64 and res["problems"] == []
        [mode] = res["modes"]
        assert mode["mode"] == "none" and mode["offload"] == "none" and mode["peak_warm_gib"] is None
        assert mode["cold_load_s"] > 0 and mode["denoise_s"] > 0 and mode["total_s"] > 0
        assert res["lora"]["changed_image"] and res["lora"]["checkpoint_reloads"] == 0
    text = capsys.readouterr().out
    assert "lora on flux (offload none): changed the image" in text and "sd3: 64 px" in text


def test_refuses_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    spec = importlib.util.spec_from_file_location("gpu_render", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err


def test_real_size_checks_run_both_families_on_the_device_and_report_problems(tmp_path, monkeypatch):
    """``--real-size`` hands each family to benchmarks/real_size.py on the same device (the full-size files are
    tested in test_real_size.py; here the wiring: arguments, results, a failing run reported as a problem)."""
    import subprocess
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("gpu_render", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        family = cmd[cmd.index("--family") + 1]
        if family == "sd15":
            Path(cmd[cmd.index("--out") + 1]).write_text(json.dumps({"problems": []}))
            return SimpleNamespace(returncode=0, stderr="")
        return SimpleNamespace(returncode=1, stderr="CUDA out of memory")

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = mod.real_size_checks(SimpleNamespace(tiny=False, size=None, steps=20, device="cuda"))
    assert [c[c.index("--family") + 1] for c in calls] == ["sd15", "sdxl"]
    assert all(c[c.index("--device") + 1] == "cuda" for c in calls)
    assert [c[c.index("--size") + 1] for c in calls] == ["512", "1024"]
    assert out["sd15"]["problems"] == [] and "out of memory" in out["sdxl"]["problems"][0]
