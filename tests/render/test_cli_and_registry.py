"""The CLI handlers, the module-level ``render()``, and rendering from a real (tiny) registry."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from diffagent.errors import UserInputError
from diffagent.render import parse_png_parameters


@pytest.fixture
def cli(monkeypatch, tiny):
    """The render CLI with renderers that resolve to the tiny models."""
    import diffagent.render.renderer as renderer_mod
    from diffagent.render import cli as render_cli

    class TinyRenderer(renderer_mod.Renderer):
        def __init__(self, settings, **kw):
            super().__init__(settings, resolver=tiny.resolver, skeletons=tiny.skeletons, **kw)

    monkeypatch.setattr(renderer_mod, "Renderer", TinyRenderer)
    parser = argparse.ArgumentParser()
    render_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_render_command_writes_png(cli, tiny, settings, tmp_path, capsys):
    call_file = tmp_path / "call.json"
    call_file.write_text(tiny.call(2, sampler="DPM++ 2S a Karras").model_dump_json())
    args = cli.parse_args(["render", "--call", str(call_file), "--out", str(tmp_path / "out"), "--json"])
    assert args.func(args, settings) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sampler_exact"] is False and "preview_png" not in out
    assert parse_png_parameters(out["path"]).sampler == "DPM++ 2S a Karras"


def test_render_command_rejects_bad_call(cli, settings, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompt": "x"}))
    args = cli.parse_args(["render", "--call", str(bad)])
    with pytest.raises(UserInputError, match="not a valid ApiCall"):
        args.func(args, settings)
    args = cli.parse_args(["render", "--call", str(tmp_path / "missing.json")])
    with pytest.raises(UserInputError, match="cannot read"):
        args.func(args, settings)


def test_generate_selects_then_renders(cli, tiny, settings, tmp_path, monkeypatch, capsys):
    import diffagent.tools as tools

    seen = {}

    def fake_select(prompt, options=None, *, runtime=None):
        seen.update(prompt=prompt, base=options.base, seed=options.seed)
        return tiny.call(1, prompt=prompt, seed=options.seed)

    monkeypatch.setattr(tools, "select_t2i_api", fake_select)
    args = cli.parse_args(
        [
            "generate",
            "a red fox",
            "--base",
            "sd15",
            "--seed",
            "9",
            "--out",
            str(tmp_path),
            "--save-call",
            str(tmp_path / "call.json"),
        ]
    )
    assert args.func(args, settings) == 0
    assert seen == {"prompt": "a red fox", "base": "sd15", "seed": 9}
    path = capsys.readouterr().out.split()[0]
    assert parse_png_parameters(path).prompt == "a red fox"
    assert json.loads((tmp_path / "call.json").read_text())["seed"] == 9


def test_module_level_render_uses_one_default_renderer(tiny, settings, tmp_path, monkeypatch):
    import diffagent.render.renderer as renderer_mod

    monkeypatch.setattr(renderer_mod, "_default", None)
    first = renderer_mod.default_renderer(settings)
    first._resolver, first._skeletons = tiny.resolver, dict(tiny.skeletons)
    res = renderer_mod.render(tiny.call(1), settings=settings, output_dir=tmp_path)
    assert res.path.exists() and renderer_mod.default_renderer(settings) is first
    assert renderer_mod.default_renderer() is first
    first.close()


def test_render_from_a_tiny_registry(tiny_registry, tiny, settings, tmp_path):
    """ModelRefs from the registry, weights from the content-addressed cache under the registry's hashes."""
    from diffagent.apicall import ApiCall
    from diffagent.render import Renderer

    def place(version_id, src):
        ws = tiny_registry.weight_source(version_id)
        target = settings.weights_dir / "sha256" / ws.sha256.lower() / ws.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)
        return ws

    place(1001, tiny.files[2][0])  # PhotonReal (SD 1.5 checkpoint) <- tiny single file
    grain = place(2001, tiny.files[21][0])  # Film Grain LoRA <- tiny kohya LoRA
    easy = place(3001, tiny.files[31][0])  # EasyNegative embedding
    token = tiny_registry.version(3001).trained_words[0]
    call = ApiCall(
        checkpoint=tiny_registry.model_ref(1001),
        loras=[{**tiny_registry.model_ref(2001).model_dump(), "weight": 0.6}],
        embeddings=[{**tiny_registry.model_ref(3001).model_dump(), "token": token, "negative": True}],
        prompt="portrait photo of an old fisherman",
        width=64,
        height=64,
        steps=2,
        sampler="Euler a",
    )
    renderer = Renderer(settings, registry=tiny_registry, skeletons=tiny.skeletons)
    try:
        res = renderer.render(call, output_dir=tmp_path)
    finally:
        renderer.close()
    meta = parse_png_parameters(res.path)
    assert meta.settings["Model hash"] == tiny_registry.weight_source(1001).sha256[:10].lower()
    assert meta.settings["Lora hashes"] == f"{call.loras[0].name}: {grain.sha256[:10].lower()}"
    assert f"<lora:{call.loras[0].name}:0.6>" in meta.prompt
    assert meta.negative_prompt.endswith(token) and easy.sha256[:10].lower() in meta.settings["TI hashes"]
