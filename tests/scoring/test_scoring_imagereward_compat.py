"""Fails loudly when image-reward changes upstream: the shims were written against 1.5's exact sources."""

import sys
import warnings

from diffagent.scoring import imagereward_compat


def test_upstream_is_the_version_the_shims_were_written_for():
    problems = imagereward_compat.upstream_problems()
    assert problems == [], (
        "image-reward differs from the version diffagent/scoring/imagereward_compat.py was written for: "
        + "; ".join(problems)
        + ". Re-check every shim listed in that module's docstring, then update EXPECTED_SOURCES."
    )


def test_shimmed_import_has_no_side_effects():
    import transformers

    verbosity = transformers.logging.get_verbosity()
    m = imagereward_compat.modules()
    assert transformers.logging.get_verbosity() == verbosity  # blip_pretrain sets it to ERROR
    # blip.py runs warnings.filterwarnings("ignore"), which would hide every warning in the process
    assert not [f for f in warnings.filters if f[0] == "ignore" and f[1] is None and f[2] is Warning and f[3] is None]
    # only the scoring modules are imported: no training script, no stubbed third-party packages
    assert "ImageReward.ReFL" not in sys.modules
    assert "ImageReward.models.CLIPScore" not in sys.modules
    for name in ("clip", "datasets"):  # a stub module would have no __file__
        assert name not in sys.modules or getattr(sys.modules[name], "__file__", None)
    assert m.reward.ImageReward.__name__ == "ImageReward"


def test_constants_the_scorer_relies_on():
    m = imagereward_compat.modules()
    # the scorer's batched forward re-implements ImageReward.score with these
    import inspect

    src = inspect.getsource(m.reward.ImageReward.score)
    assert f"max_length={imagereward_compat.TEXT_MAX_LENGTH}" in src
    assert "last_hidden_state[:,0,:]" in src
    assert "(rewards - self.mean) / self.std" in src
    init = inspect.getsource(m.reward.ImageReward.__init__)
    assert f"MLP({imagereward_compat.MLP_WIDTH})" in init and f"image_size={imagereward_compat.IMAGE_SIZE}" in init


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from diffagent.errors import MissingDependency

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    try:
        imagereward_compat.package_dir()
    except MissingDependency as e:
        assert "--no-deps" in str(e) and "image-reward==1.5" in str(e)
    else:
        raise AssertionError("package_dir() did not raise")
