"""The training config file and the ``diffagent train`` commands."""

from __future__ import annotations

import argparse
import json

import pytest

from diffagent.errors import UserInputError
from diffagent.settings import Settings
from diffagent.training import cli as train_cli
from diffagent.training.config import TrainConfig, load_config


def test_config_from_toml_and_json(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text("seed = 7\n[sft]\nlr = 5e-4\nmax_steps = 3\n[lora]\nr = 4\nlayers = [9, 10]\n")
    cfg = load_config(toml)
    assert (cfg.seed, cfg.sft.lr, cfg.sft.max_steps, cfg.lora.r, cfg.lora.layers) == (7, 5e-4, 3, 4, [9, 10])
    assert cfg.rrhf == TrainConfig().rrhf  # untouched sections keep their defaults
    js = tmp_path / "train.json"
    js.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert load_config(js) == cfg
    assert load_config(None) == TrainConfig()


@pytest.mark.parametrize(
    "text,match",
    [
        ("[sft]\nlearning_rate = 1\n", "learning_rate"),
        ("[sft]\nlr = -1\n", "lr"),
        ("seed = [\n", "not valid TOML"),
        ("[rrhf]\nreward = 'vibes'\n", "reward"),
    ],
)
def test_bad_configs_say_what_is_wrong(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=match):
        load_config(path)
    with pytest.raises(UserInputError, match="not found"):
        load_config(tmp_path / "missing.toml")


def _parser():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    train_cli.register(sub)
    return parser


def test_train_group_has_every_stage():
    parser = _parser()
    for cmd in ("data", "sft", "rrhf", "export", "eval"):
        args = parser.parse_args(["train", cmd, "--seed", "3"])
        assert callable(args.func) and args.seed == 3
    args = parser.parse_args(["train", "export", "--stage", "sft", "--merged"])
    assert args.stage == "sft" and args.merged
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "export", "--stage", "base"])


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('work_dir = "/somewhere"\n[sft]\nmax_steps = 50\n[data]\nlimit = 9\n')
    args = _parser().parse_args(
        ["train", "sft", "--config", str(path), "--work-dir", str(tmp_path), "--max-steps", "2", "--limit", "4"]
    )
    cfg = train_cli._config(args)
    assert cfg.work_dir == tmp_path and cfg.sft.max_steps == 2 and cfg.data.limit == 4
    assert cfg.rrhf.max_steps is None  # --max-steps applies to the stage being run


def test_data_command_builds_examples_on_the_tiny_registry(tmp_path, tiny_registry_path, capsys):
    from test_data import _pairs_file

    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    args = _parser().parse_args(
        ["train", "data", "--work-dir", str(tmp_path / "w"), "--pairs", str(pairs), "--limit", "3", "--quiet"]
    )
    assert args.func(args, Settings(registry=tiny_registry_path)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 3 and 0 <= out["examples"] <= 3
    assert (tmp_path / "w" / "data" / "examples.jsonl").is_file()
    assert (tmp_path / "w" / "data" / "report.json").is_file()


def test_stages_explain_what_to_run_first(tmp_path, tiny_registry_path):
    settings = Settings(registry=tiny_registry_path, data_dir=tmp_path)
    parser = _parser()
    args = parser.parse_args(["train", "data", "--work-dir", str(tmp_path)])
    with pytest.raises(UserInputError, match="pairs"):
        args.func(args, settings)
    args = parser.parse_args(["train", "export", "--work-dir", str(tmp_path), "--stage", "sft"])
    with pytest.raises(UserInputError, match="diffagent train sft"):
        args.func(args, settings)
    args = parser.parse_args(["train", "rrhf", "--work-dir", str(tmp_path)])
    with pytest.raises(UserInputError, match="diffagent train sft"):
        args.func(args, settings)


def test_a_database_registry_is_checked_by_opening_it(tmp_path):
    """A postgresql:// registry in the training config is not a file to look for: opening it says what is wrong."""
    pytest.importorskip("psycopg", reason="the 'postgres' extra")
    from diffagent.training.pipeline import _registry

    cfg = TrainConfig(registry="postgresql://nobody@/nodb?host=/nonexistent-socket-folder")
    with pytest.raises(UserInputError, match="cannot open the registry database postgresql://nobody@/nodb"):
        _registry(cfg, Settings(data_dir=tmp_path))


def test_device_flag_reaches_every_llm_stage(tmp_path):
    parser = _parser()
    for stage in ("sft", "rrhf"):
        args = parser.parse_args(["train", stage, "--work-dir", str(tmp_path), "--device", "cuda:1"])
        assert train_cli._config(args).device == "cuda:1"
    args = parser.parse_args(["train", "sft", "--work-dir", str(tmp_path)])
    assert train_cli._config(args).device == "cpu"
    args = parser.parse_args(["train", "cardlm", "--pairs", "p.jsonl", "--device", "cuda"])
    assert args.device == "cuda"


@pytest.mark.parametrize("device,match", [("tpu9", "not a torch device"), ("cuda", "no CUDA GPU")])
def test_a_device_this_machine_lacks_is_refused_before_any_loading(tmp_path, tiny_registry_path, device, match):
    """`train sft --device cuda` on a machine without a GPU says so at once, not after converting the base model."""
    torch = pytest.importorskip("torch")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    settings = Settings(registry=tiny_registry_path, data_dir=tmp_path)
    args = _parser().parse_args(["train", "sft", "--work-dir", str(tmp_path), "--device", device])
    with pytest.raises(UserInputError, match=match):
        args.func(args, settings)
    assert not (tmp_path / "base_hf").exists()
