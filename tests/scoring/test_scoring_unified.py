import pytest
import tiny_scorers

from diffagent.errors import UserInputError
from diffagent.scoring import ReferenceStats, Scorer, ScoreResult
from diffagent.scoring.config import ScoringConfig
from diffagent.scoring.unified import UnifiedScorer

PROMPT = "a blue fox painting"


class FixedScorer:
    def __init__(self, metric, values):
        self.metric = metric
        self.values = values
        self.calls = 0

    def score(self, prompt, images):
        self.calls += 1
        return list(self.values[: len(images)])


def stats():
    return ReferenceStats.model_validate(
        {
            "metrics": {
                "clip_score": {"mean": 30, "std": 5},
                "image_reward": {"mean": 0, "std": 1},
                "hps_v2": {"mean": 0.25, "std": 0.02},
            }
        }
    )


def test_unified_maths_with_known_raw_scores():
    scorers = {
        "clip_score": FixedScorer("clip_score", [40.0, 25.0]),
        "image_reward": FixedScorer("image_reward", [0.5, -1.0]),
        "hps_v2": FixedScorer("hps_v2", [0.27, 0.25]),
    }
    u = UnifiedScorer(scorers, weights={"clip_score": 1, "image_reward": 2, "hps_v2": 1}, stats=stats())
    r = u.score(PROMPT, tiny_scorers.images(2))
    assert [x.metrics["clip_score"].normalized for x in r] == pytest.approx([2.0, -1.0])
    assert [x.metrics["hps_v2"].normalized for x in r] == pytest.approx([1.0, 0.0])
    assert r[0].unified == pytest.approx((2.0 + 2 * 0.5 + 1.0) / 4)
    assert r[1].unified == pytest.approx((-1.0 + 2 * -1.0 + 0.0) / 4)
    assert r[0].metrics["image_reward"].weight == 2
    assert isinstance(u, Scorer)


def test_zero_weight_metric_is_not_computed():
    clip = FixedScorer("clip_score", [40.0])
    hps = FixedScorer("hps_v2", [0.3])
    u = UnifiedScorer({"clip_score": clip, "hps_v2": hps}, weights={"clip_score": 0, "hps_v2": 1}, stats=stats())
    (r,) = u.score(PROMPT, tiny_scorers.images(1))
    assert clip.calls == 0 and set(r.metrics) == {"hps_v2"}
    assert r.unified == pytest.approx(2.5)


def test_input_validation():
    u = UnifiedScorer({"hps_v2": FixedScorer("hps_v2", [0.3, 0.3])}, weights={"hps_v2": 1}, stats=stats())
    assert u.score(PROMPT, []) == []
    with pytest.raises(UserInputError, match="prompt is empty"):
        u.score("  ", tiny_scorers.images(1))
    with pytest.raises(UserInputError, match="not a PIL image"):
        u.score(PROMPT, ["x.png"])
    with pytest.raises(UserInputError, match="no scorer"):
        UnifiedScorer({}, weights={"hps_v2": 1}, stats=stats())
    with pytest.raises(UserInputError, match="no reference statistics"):
        UnifiedScorer({"hps_v2": FixedScorer("hps_v2", [])}, weights={"hps_v2": 1}, stats=ReferenceStats(metrics={}))
    short = UnifiedScorer({"hps_v2": FixedScorer("hps_v2", [0.3])}, weights={"hps_v2": 1}, stats=stats())
    with pytest.raises(RuntimeError, match="1 scores for 2 images"):
        short.score(PROMPT, tiny_scorers.images(2))


def test_from_config_runs_all_three_real_scorers(tiny_config):
    u = UnifiedScorer.from_config(tiny_config)
    ims = tiny_scorers.images(3, seed=5)
    results = u.score(PROMPT, ims)
    assert len(results) == 3 and all(isinstance(r, ScoreResult) for r in results)
    shipped = ReferenceStats.shipped()
    for r in results:
        assert set(r.metrics) == {"clip_score", "image_reward", "hps_v2"}
        for name, m in r.metrics.items():
            assert m.normalized == pytest.approx(shipped.metrics[name].normalize(m.raw))
        assert r.unified == pytest.approx(sum(m.normalized for m in r.metrics.values()) / 3)
    # each metric on its own gives the same raw numbers
    alone = UnifiedScorer.from_config(tiny_config.model_copy(update={"weights": {"hps_v2": 1.0}})).score(PROMPT, ims)
    assert [a.metrics["hps_v2"].raw for a in alone] == pytest.approx([r.metrics["hps_v2"].raw for r in results])


def test_from_config_with_custom_stats_and_weights(tiny_config, tmp_path):
    path = ReferenceStats.fit({"hps_v2": [0.1, 0.3], "clip_score": [0.0, 10.0]}).save(tmp_path / "s.json")
    cfg = tiny_config.model_copy(update={"reference_stats": path, "weights": {"hps_v2": 3.0, "clip_score": 1.0}})
    u = UnifiedScorer.from_config(cfg)
    assert u.metrics == ["hps_v2", "clip_score"]
    (r,) = u.score(PROMPT, tiny_scorers.images(1))
    z = {
        m: (r.metrics[m].raw - ReferenceStats.load(path).metrics[m].mean) / ReferenceStats.load(path).metrics[m].std
        for m in r.metrics
    }
    assert r.unified == pytest.approx((3 * z["hps_v2"] + z["clip_score"]) / 4)


def test_config_from_settings():
    from diffagent.settings import Settings

    s = Settings(device="cpu", allow_downloads=False)
    cfg = ScoringConfig.from_settings(s, batch_size=3)
    assert (cfg.device, cfg.allow_downloads, cfg.batch_size) == ("cpu", False, 3)
    assert cfg.hps_checkpoint == "hf:xswu/HPSv2/HPS_v2.1_compressed.pt"
    with pytest.raises(ValueError, match="unknown device"):
        ScoringConfig(device="gpu0")


def test_package_exports_every_lazy_name():
    import diffagent.scoring as scoring

    lazy = set(scoring._LAZY)
    assert lazy <= set(scoring.__all__)
    assert lazy == set(scoring.__all__) - {n for n in scoring.__all__ if n in vars(scoring)}
