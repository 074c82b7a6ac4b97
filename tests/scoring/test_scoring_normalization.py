import json
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diffagent.errors import UserInputError
from diffagent.scoring.normalization import MetricStats, ReferenceStats, unified_mean, validate_weights
from diffagent.scoring.types import METRICS


def test_zscore():
    s = MetricStats(mean=30.0, std=4.0)
    assert s.normalize(38.0) == pytest.approx(2.0)
    assert s.normalize(26.0) == pytest.approx(-1.0)
    assert s.normalize(30.0) == 0.0


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan"), float("inf")])
def test_stats_refuse_bad_spread(std):
    with pytest.raises(ValueError):
        MetricStats(mean=0.0, std=std)


def test_unified_weighted_mean():
    z = {"clip_score": 1.0, "image_reward": -2.0, "hps_v2": 4.0}
    assert unified_mean(z, {"clip_score": 1, "image_reward": 1, "hps_v2": 1}) == pytest.approx(1.0)
    assert unified_mean(z, {"clip_score": 2, "image_reward": 1, "hps_v2": 1}) == pytest.approx(
        1.0 * 2 / 4 + -2 / 4 + 4 / 4
    )
    # weight 0 drops the metric entirely, even when it was not scored
    assert unified_mean({"clip_score": 1.0, "hps_v2": 3.0}, {"clip_score": 1, "image_reward": 0, "hps_v2": 1}) == 2.0


def test_unified_needs_every_weighted_metric():
    with pytest.raises(UserInputError, match="hps_v2"):
        unified_mean({"clip_score": 1.0}, {"clip_score": 1, "hps_v2": 1})


@pytest.mark.parametrize("weights", [{"a": -1, "b": 1}, {"a": 0, "b": 0}, {"a": float("nan")}, {}])
def test_bad_weights(weights):
    with pytest.raises(UserInputError):
        validate_weights(weights)


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3),
    st.lists(st.floats(0.01, 100), min_size=3, max_size=3),
)
def test_unified_lies_between_min_and_max(values, ws):
    names = ["m0", "m1", "m2"][: len(values)]
    z = dict(zip(names, values))
    w = dict(zip(names, ws))
    u = unified_mean(z, w)
    assert min(values) - 1e-6 * (1 + abs(min(values))) <= u <= max(values) + 1e-6 * (1 + abs(max(values)))


def test_fit_matches_statistics_module():
    xs = [29.0, 31.5, 33.0, 27.25, 30.0]
    ys = [0.21, 0.27, 0.25]
    stats = ReferenceStats.fit({"clip_score": xs, "hps_v2": ys}, models={"clip_score": "ViT-L-14"})
    assert stats.metrics["clip_score"].mean == pytest.approx(statistics.mean(xs))
    assert stats.metrics["clip_score"].std == pytest.approx(statistics.stdev(xs))
    assert stats.metrics["hps_v2"].std == pytest.approx(statistics.stdev(ys))
    assert stats.metrics["clip_score"].measured and stats.metrics["clip_score"].n == 5
    assert stats.metrics["clip_score"].model == "ViT-L-14"
    # the fitted statistics make the sample itself mean 0, std 1
    z = [stats.metrics["clip_score"].normalize(x) for x in xs]
    assert statistics.mean(z) == pytest.approx(0.0, abs=1e-12)
    assert statistics.stdev(z) == pytest.approx(1.0)


@pytest.mark.parametrize("values", [[1.0], [2.0, 2.0, 2.0]])
def test_fit_refuses_unmeasurable_spread(values):
    with pytest.raises(UserInputError):
        ReferenceStats.fit({"clip_score": values})


def test_save_load_round_trip(tmp_path):
    stats = ReferenceStats.fit({"clip_score": [1.0, 2.0, 4.0]})
    path = stats.save(tmp_path / "sub" / "stats.json")
    assert ReferenceStats.load(path) == stats
    assert json.loads(path.read_text())["schema"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["stats.json"]  # no temp file left behind


def test_load_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        ReferenceStats.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"metrics": {"clip_score": {"mean": 1, "std": 0}}}')
    with pytest.raises(UserInputError, match="malformed"):
        ReferenceStats.load(bad)
    bad.write_text('{"normalization": "minmax", "metrics": {}}')
    with pytest.raises(UserInputError, match="malformed"):
        ReferenceStats.load(bad)


def test_shipped_stats_cover_every_metric():
    stats = ReferenceStats.load(None)
    assert set(METRICS) <= set(stats.metrics)
    for name in METRICS:
        s = stats.metrics[name]
        assert s.std > 0 and math.isfinite(s.mean) and s.source and s.model
    # ImageReward is already standardized by its package: the identity is exact, not a guess
    assert (stats.metrics["image_reward"].mean, stats.metrics["image_reward"].std) == (0.0, 1.0)
    assert stats.metrics["image_reward"].measured
    with pytest.raises(UserInputError, match="no reference statistics"):
        stats.require("aesthetic")
