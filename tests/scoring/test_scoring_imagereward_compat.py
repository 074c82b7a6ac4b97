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
    filters = list(warnings.filters)
    m = imagereward_compat.modules()
    assert transformers.logging.get_verbosity() == verbosity  # blip_pretrain sets it to ERROR
    assert list(warnings.filters) == filters  # blip.py installs a global "ignore"
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
