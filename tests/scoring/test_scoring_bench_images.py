"""diffagent bench images: prompt files, baseline calls, gain maths, and end-to-end runs on CPU."""

import argparse
import json
import math
from pathlib import Path

import pytest
import tiny_scorers
from PIL import Image

from diffagent.apicall import ApiCall, LoraRef, ModelRef
from diffagent.bench import images as bench
from diffagent.errors import NotFoundError, UserInputError
from diffagent.families import Family
from diffagent.scoring import ReferenceStats, ScoreResult
from diffagent.scoring.cli import BenchDeps, cmd_bench_images, parse_baselines, parse_weights, register, register_bench
from diffagent.scoring.unified import UnifiedScorer
from diffagent.settings import Settings


def ref(i, family=Family.SD1, name=None):
    return ModelRef(id=i, air=f"urn:air:test:{i}", name=name or f"ckpt-{i}", family=family)


# --- prompt files ------------------------------------------------------------------------------


def test_prompt_file_formats(tmp_path):
    (tmp_path / "drawbench.csv").write_text("Prompts,Category\nA red colored car.,Colors\nA black dog.,Colors\n")
    (tmp_path / "geneval.txt").write_text("a photo of a cat\n\n a photo of a dog \n")
    (tmp_path / "ir.json").write_text(json.dumps([{"id": "1", "prompt": "a concept art of a vehicle"}, "plain string"]))
    (tmp_path / "mixed.jsonl").write_text('{"prompt": "p1", "dataset": "A"}\n{"text": "p2"}\n')
    (tmp_path / "grouped.json").write_text(json.dumps({"X": ["x1", "x2"], "Y": ["y1"]}))
    items = bench.load_prompts(
        [tmp_path / n for n in ("drawbench.csv", "geneval.txt", "ir.json", "mixed.jsonl", "grouped.json")]
    )
    got = [(i.dataset, i.prompt) for i in items]
    assert got == [
        ("drawbench", "A red colored car."),
        ("drawbench", "A black dog."),
        ("geneval", "a photo of a cat"),
        ("geneval", "a photo of a dog"),
        ("ir", "a concept art of a vehicle"),
        ("ir", "plain string"),
        ("A", "p1"),
        ("mixed", "p2"),
        ("X", "x1"),
        ("X", "x2"),
        ("Y", "y1"),
    ]
    first = bench.load_prompts([tmp_path / "grouped.json", tmp_path / "geneval.txt"], n=1)
    assert [(i.dataset, i.prompt) for i in first] == [("X", "x1"), ("Y", "y1"), ("geneval", "a photo of a cat")]


def test_prompt_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        bench.load_prompts([tmp_path / "none.txt"])
    (tmp_path / "p.yaml").write_text("- a\n")
    with pytest.raises(UserInputError, match="unsupported"):
        bench.load_prompts([tmp_path / "p.yaml"])
    (tmp_path / "nocol.csv").write_text("id,category\n1,x\n")
    with pytest.raises(UserInputError, match="no prompt column"):
        bench.load_prompts([tmp_path / "nocol.csv"])
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"id": 3}\n')
    with pytest.raises(UserInputError, match="bad.jsonl:2"):
        bench.load_prompts([tmp_path / "bad.jsonl"])
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserInputError, match="no prompts"):
        bench.load_prompts([tmp_path / "empty.txt"])
    (tmp_path / "ok.txt").write_text("a cat\n")
    with pytest.raises(UserInputError, match="at least 1"):
        bench.load_prompts([tmp_path / "ok.txt"], n=0)


@pytest.mark.shared_data
def test_shared_benchmark_prompt_files_load():
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prompts"
    if not root.is_dir():
        pytest.skip("../shared/data/prompts is not present")
    items = bench.load_prompts(
        [root / "drawbench" / "DrawBench.csv", root / "imagereward" / "benchmark-prompts.json"], n=3
    )
    assert [i.dataset for i in items] == ["DrawBench"] * 3 + ["benchmark-prompts"] * 3


# --- baseline ----------------------------------------------------------------------------------


def test_baseline_call_is_the_base_model_with_defaults():
    selected = ApiCall(
        checkpoint=ref(5, Family.PONY),
        prompt="score_9, a fox, <lora:x:1>",
        seed=99,
        steps=40,
        cfg_scale=4,
        loras=[LoraRef(**ref(6, Family.PONY).model_dump(), weight=0.8)],
        negative_prompt="bad",
        width=832,
        height=1216,
    )
    base = bench.baseline_call(selected, ref(1, Family.SDXL, "SDXL base"), "a fox")
    assert (base.checkpoint.id, base.prompt, base.seed) == (1, "a fox", 99)
    assert (base.width, base.height) == (1024, 1024)
    defaults = ApiCall(checkpoint=ref(1), prompt="x")
    assert (base.steps, base.cfg_scale, base.sampler) == (defaults.steps, defaults.cfg_scale, defaults.sampler)
    assert base.loras == [] and base.embeddings == [] and base.negative_prompt == ""
    sd1 = bench.baseline_call(ApiCall(checkpoint=ref(2), prompt="x", seed=3), ref(1), "x")
    assert (sd1.width, sd1.height) == (512, 512)


class FakeVersion:
    def __init__(self, vid, slug):
        self.id, self.slug = vid, slug

    def ref(self):
        return ref(self.id, name=self.slug)


class FakeHit:
    def __init__(self, version):
        self.version = version


class FakeRegistry:
    def __init__(self, ids):
        self.ids = ids  # version id -> slug
        self.searches = []

    def model_ref(self, vid):
        if vid not in self.ids:
            raise NotFoundError(f"no version {vid}")
        return ref(vid, name=self.ids[vid])

    def search(self, query, types=None, base=None, limit=20):
        self.searches.append((query, types, base))
        return [FakeHit(FakeVersion(v, s)) for v, s in self.ids.items()]


def test_registry_baselines():
    from diffagent.registry.schema import synthetic_id

    sd15 = synthetic_id("sd15-base@version")
    reg = FakeRegistry({sd15: "sd15-base", 77: "sdxl-base-1.0", 5: "custom"})
    find = bench.registry_baselines(reg)
    assert find("sd1").id == sd15 and reg.searches == []
    assert find("sdxl").id == 77  # not under its synthetic id: found by slug through search
    assert reg.searches == [("sdxl base 1.0", ["checkpoint"], {"sdxl"})]
    assert bench.registry_baselines(reg, {"sd1": 5})("sd1").id == 5
    with pytest.raises(NotFoundError, match="--baseline sdxl=VERSION_ID"):
        bench.registry_baselines(FakeRegistry({}))("sdxl")
    with pytest.raises(NotFoundError, match="no baseline model known"):
        find("sd3")


def test_cli_option_parsing():
    assert parse_baselines(["sd1=12", "sdxl=7"]) == {"sd1": 12, "sdxl": 7}
    with pytest.raises(UserInputError):
        parse_baselines(["sd2=1"])
    assert parse_weights(["hps_v2=2", "clip_score=0"]) == {"clip_score": 0.0, "image_reward": 1.0, "hps_v2": 2.0}
    assert parse_weights([]) is None
    with pytest.raises(UserInputError):
        parse_weights(["aesthetic=1"])


# --- gain maths ---------------------------------------------------------------------------------


def pair(dataset, sel, base, raw=1.0):
    def res(u):
        return ScoreResult(metrics={"hps_v2": {"raw": raw + u, "normalized": u, "weight": 1}}, unified=u)

    return bench.PairResult(dataset=dataset, prompt="p", selected=res(sel), baseline=res(base))


def test_summary_maths():
    pairs = [
        pair("d", 1.0, 0.0),
        pair("d", 0.0, 0.5),
        pair("d", 0.5, -0.5),
        bench.PairResult(dataset="d", prompt="x", error="boom"),
    ]
    s = bench.summarize("d", pairs)
    assert (s.n, s.failed) == (3, 1)
    assert s.selected_unified == pytest.approx(0.5) and s.baseline_unified == pytest.approx(0.0)
    assert s.delta_unified == pytest.approx(0.5)
    assert s.win_rate == pytest.approx(2 / 3)
    phi = bench.phi
    assert phi(0) == 0.5 and phi(1.0) == pytest.approx(0.841344746)
    sel_pct = (phi(1.0) + phi(0.0) + phi(0.5)) / 3
    base_pct = (phi(0.0) + phi(0.5) + phi(-0.5)) / 3
    assert s.gain_pct == pytest.approx(100 * (sel_pct - base_pct) / base_pct)
    assert s.metrics["hps_v2"]["selected"] == pytest.approx(1.5)
    assert bench.summarize("d", [bench.PairResult(dataset="d", prompt="x", error="e")]) is None


# --- end to end ---------------------------------------------------------------------------------


class PaintRenderer:
    """Writes a PNG per call: a gradient that differs by checkpoint and seed."""

    def __init__(self, folder, fail_ids=()):
        self.folder = Path(folder)
        self.fail_ids = set(fail_ids)
        self.calls = []

    def __call__(self, call):
        from types import SimpleNamespace

        if call.checkpoint.id in self.fail_ids:
            raise NotFoundError("weights missing")
        self.calls.append(call)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{len(self.calls)}.png"
        k = (call.checkpoint.id * 53 + call.seed * 17) % 200
        Image.linear_gradient("L").resize((48, 48)).point(lambda v: (v + k) % 256).convert("RGB").save(path)
        return SimpleNamespace(path=path, call=call, seconds=0.0)


def selector(prompt):
    eco_family = Family.SDXL if "xl" in prompt else Family.SD1
    return ApiCall(checkpoint=ref(10 + len(prompt) % 3, eco_family), prompt=prompt + ", masterpiece", seed=len(prompt))


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bench_sub = sub.add_parser("bench").add_subparsers(dest="bench_command")
    register_bench(bench_sub)
    register(sub)
    return parser.parse_args(argv)


def test_bench_images_end_to_end_with_tiny_scorers(tmp_path, tiny_config, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "colors.txt").write_text("a red car\na blue fox\na red dog\n")
    (prompts / "xl.jsonl").write_text('{"prompt": "an xl painting of a cat"}\n{"prompt": "an xl photo"}\n')
    out = tmp_path / "out"
    stats_path = tmp_path / "measured.json"
    args = parse(
        [
            "bench",
            "images",
            "--prompts",
            str(prompts / "colors.txt"),
            "--prompts",
            str(prompts / "xl.jsonl"),
            "--n",
            "2",
            "--out",
            str(out),
            "--save-reference-stats",
            str(stats_path),
            "--best-of",
            "2",
        ]
    )
    render = PaintRenderer(tmp_path / "renders", fail_ids={11})  # one checkpoint's weights are missing
    deps = BenchDeps(
        select_fn=selector,
        render_fn=render,
        scorer=UnifiedScorer.from_config(tiny_config),
        baseline_fn=lambda eco: ref(1 if eco == "sd1" else 2, Family.SD1 if eco == "sd1" else Family.SDXL),
    )
    settings = Settings(data_dir=tmp_path / "data", device="cpu", allow_downloads=False)
    assert cmd_bench_images(args, settings, deps) == 0

    report = bench.BenchReport.model_validate_json((out / "report.json").read_text())
    assert [p.prompt for p in report.pairs] == ["a red car", "a blue fox", "an xl painting of a cat", "an xl photo"]
    assert [s.dataset for s in report.datasets] == ["colors", "xl"] and report.overall.dataset == "all"
    baseline_ids = {p.baseline_call.checkpoint.id for p in report.pairs if p.baseline_call}
    assert baseline_ids == {1, 2}
    # "a blue fox" selects checkpoint 11, whose weights are missing; best-of-2 can only add another seed of it
    assert [p.error for p in report.pairs] == [None, "weights missing", None, None]
    for p in report.pairs[:1] + report.pairs[2:]:
        assert set(p.selected.metrics) == {"clip_score", "image_reward", "hps_v2"}
        assert Path(p.selected_path).is_file() and Path(p.baseline_path).is_file()
        assert p.baseline_call.seed == len(p.prompt)  # the selector's seed (best-of may pick the next seed)
    xl = report.datasets[1]
    assert xl.delta_unified == pytest.approx(sum(p.selected.unified - p.baseline.unified for p in report.pairs[2:]) / 2)
    assert math.isfinite(xl.gain_pct)
    table = capsys.readouterr().out
    assert "| colors | 1 (+1 failed) |" in table and "| xl | 2 |" in table and "**all**" in table
    assert (out / "report.md").read_text() == bench.markdown_table(report)
    assert bench.markdown_table(report) in table
    for plot in ("gain_per_dataset.png", "unified_per_dataset.png"):
        with Image.open(out / plot) as im:
            assert im.format == "PNG" and im.width > 100
    stats = ReferenceStats.load(stats_path)
    assert stats.metrics["hps_v2"].n == 6 and stats.metrics["hps_v2"].measured


def test_bench_images_reports_failures(tmp_path, tiny_config):
    (tmp_path / "p.txt").write_text("a cat\n")
    args = parse(["bench", "images", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out")])
    deps = BenchDeps(
        select_fn=selector,
        render_fn=PaintRenderer(tmp_path / "r", fail_ids={1}),  # the baseline's weights are missing
        scorer=UnifiedScorer.from_config(tiny_config),
        baseline_fn=lambda eco: ref(1),
    )
    assert cmd_bench_images(args, Settings(data_dir=tmp_path / "d"), deps) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pairs"][0]["error"] == "weights missing" and report["datasets"] == []


@pytest.mark.slow
def test_bench_images_with_the_real_renderer_on_tiny_pipelines(tmp_path, tiny_config):
    tm = tiny_scorers.render_tiny_models()
    from diffagent.render import Renderer
    from diffagent.render.weights import ResolvedWeights

    tm.quiet_diffusers()
    dirs = {
        1: tm.build_sd15(tmp_path / "base", seed=0) and tmp_path / "base",
        12: tm.build_sd15(tmp_path / "tuned", seed=1) and tmp_path / "tuned",
    }

    def resolver(r):
        return ResolvedWeights(path=dirs[r.id], family=Family.SD1, type="checkpoint", name=r.name)

    settings = Settings(data_dir=tmp_path / "data", device="cpu", allow_downloads=False, registry=tmp_path / "none.db")
    renderer = Renderer(settings, resolver=resolver)
    try:

        def select(prompt):
            return ApiCall(checkpoint=ref(12), prompt=prompt, steps=2, width=64, height=64, seed=5, sampler="Euler")

        def render(call):  # the baseline's default 512 px and 25 steps would be slow on CPU: shrink them
            if call.checkpoint.id == 1:
                call = call.model_copy(update={"width": 64, "height": 64, "steps": 2})
            return renderer.render(call, output_dir=tmp_path / "images")

        (tmp_path / "p.txt").write_text("a photo of a cat\n")
        args = parse(["bench", "images", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out")])
        deps = BenchDeps(
            select_fn=select,
            render_fn=render,
            scorer=UnifiedScorer.from_config(tiny_config),
            baseline_fn=lambda eco: ref(1),
        )
        assert cmd_bench_images(args, settings, deps) == 0
    finally:
        renderer.close()
    report = bench.BenchReport.model_validate_json((tmp_path / "out" / "report.json").read_text())
    (p,) = report.pairs
    with Image.open(p.selected_path) as im:
        assert im.size == (64, 64) and "parameters" in im.text
    assert p.selected.unified != p.baseline.unified


def test_score_command(tmp_path, tiny_config, capsys):
    from types import SimpleNamespace

    from diffagent.scoring.cli import cmd_score

    paths = []
    for i, im in enumerate(__import__("tiny_scorers").images(2)):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    # a settings object carrying a nested scoring config, as Settings.scoring would
    settings = SimpleNamespace(device="cpu", allow_downloads=False, scoring=tiny_config)
    args = parse(["score", "a red car", *map(str, paths), "--json", "--weight", "image_reward=0"])
    assert cmd_score(args, settings) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["image"] for o in out] == [str(p) for p in paths]
    assert set(out[0]["metrics"]) == {"clip_score", "hps_v2"}
    args = parse(["score", "a red car", str(paths[0])])
    assert cmd_score(args, settings) == 0
    assert "| image | clip_score | image_reward | hps_v2 | unified |" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="cannot read image"):
        cmd_score(parse(["score", "x", str(tmp_path / "missing.png")]), settings)
