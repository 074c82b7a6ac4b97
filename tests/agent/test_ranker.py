"""The learned checkpoint ranker: features, the JSON tree ensemble against scikit-learn, monotonicity,
loading errors, its use in retrieval, and ``diffagent train ranker`` end to end on the tiny registry."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from diffagent.agent import ranker as rk
from diffagent.agent.retrieve import retrieve_checkpoints
from diffagent.bench.pairs import Pair, Target
from diffagent.errors import UserInputError
from diffagent.families import parse_base_constraint
from diffagent.training.ranker import Collected, agreement, fit, train_ranker


def hit(vid, model, downloads=100, **signals):
    return SimpleNamespace(version=SimpleNamespace(id=vid, model_id=model, downloads=downloads), signals=signals)


def synthetic(n_pairs=300, rows=20, seed=0) -> Collected:
    """The creators' checkpoint is the row with a strong kNN vote among rarely downloaded ones, and
    the first stage (stored order) sorts by downloads: a rule a weighted sum cannot express."""
    rng = np.random.default_rng(seed)
    X, y, group, model, target_model = [], [], [], [], []
    for j in range(n_pairs):
        f = np.zeros((rows, len(rk.FEATURES)))
        f[:, rk.FEATURES.index("knn")] = rng.random(rows)
        f[:, rk.FEATURES.index("log_downloads")] = np.sort(rng.random(rows) * 12)[::-1]
        f[:, rk.FEATURES.index("page_versions")] = 1
        good = (f[:, rk.FEATURES.index("knn")] + (f[:, rk.FEATURES.index("log_downloads")] < 6)).argmax()
        X.append(f)
        y += [i == good for i in range(rows)]
        group += [j] * rows
        model += list(range(j * rows, (j + 1) * rows))  # every row its own page
        target_model.append(j * rows + good)
    return Collected(
        X=np.vstack(X),
        y=np.array(y, dtype=np.int8),
        group=np.array(group),
        model=np.array(model),
        target_model=np.array(target_model),
        pairs=n_pairs,
    )


def prior_only(n_pairs=200, rows=20, seed=0) -> Collected:
    """Only the prior (popularity) tells the creators' checkpoint apart: it is each pair's most popular row."""
    rng = np.random.default_rng(seed)
    X = rng.random((n_pairs * rows, len(rk.FEATURES)))
    group = np.arange(n_pairs * rows) // rows
    prior = X[:, rk.FEATURES.index("prior")].reshape(n_pairs, rows)
    y = (prior == prior.max(axis=1, keepdims=True)).ravel().astype(np.int8)
    return Collected(
        X=X, y=y, group=group, model=np.arange(len(y)), target_model=np.zeros(n_pairs, dtype=int), pairs=n_pairs
    )


def test_features_count_page_versions_and_mark_the_newest():
    hits = [hit(11, 1, knn=0.5, prior=0.2), hit(12, 1, downloads=0), hit(21, 2, semantic=0.3)]
    X = rk.features(hits)
    col = {f: X[:, i] for i, f in enumerate(rk.FEATURES)}
    assert X.shape == (3, len(rk.FEATURES))
    assert col["knn"].tolist() == [0.5, 0, 0] and col["semantic"].tolist() == [0, 0, 0.3]
    assert col["page_versions"].tolist() == [2, 2, 1]
    assert col["newest_of_page"].tolist() == [0, 1, 1]
    assert col["log_downloads"][0] == pytest.approx(math.log1p(100))
    assert rk.features([]).shape == (0, len(rk.FEATURES))


def test_learns_a_rule_the_first_stage_misses_and_json_matches_sklearn():
    train, val = synthetic(seed=0), synthetic(n_pairs=200, seed=1)
    model, clf = fit(train, max_iter=60)
    first = agreement(val, -np.arange(len(val.y), dtype=float))
    learned = agreement(val, model.raw(val.X))
    assert learned["top1"] > first["top1"] + 0.3
    np.testing.assert_allclose(model.raw(val.X), clf.decision_function(val.X), rtol=1e-9, atol=1e-9)
    again = rk.TreeEnsemble.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_array_equal(again.raw(val.X), model.raw(val.X))


def test_a_stronger_signal_never_lowers_the_score():
    model, _ = fit(synthetic(), max_iter=40)
    rng = np.random.default_rng(3)
    X = rng.random((500, len(rk.FEATURES))) * 3
    for i, monotone in enumerate(rk.MONOTONE):
        if monotone:
            up = X.copy()
            up[:, i] += rng.random(len(X))
            assert (model.raw(up) >= model.raw(X) - 1e-12).all(), rk.FEATURES[i]


def test_digest_names_the_trees_not_the_notes():
    model, _ = fit(synthetic(n_pairs=50), max_iter=5)
    data = model.to_json()
    assert rk.TreeEnsemble.from_json({**data, "meta": {"note": "retold"}}).digest() == model.digest()
    changed = {**data, "value": [data["value"][0] + 1e-6, *data["value"][1:]]}
    assert rk.TreeEnsemble.from_json(changed).digest() != model.digest()


def test_wrong_shapes_and_files_are_refused_with_the_fix(tmp_path):
    model, _ = fit(synthetic(n_pairs=50), max_iter=5)
    with pytest.raises(ValueError, match="features"):
        model.raw(np.zeros((2, 3)))
    with pytest.raises(UserInputError, match="train ranker"):
        rk.TreeEnsemble.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserInputError, match="not JSON"):
        rk.TreeEnsemble.load(bad)
    data = model.to_json()
    (tmp_path / "old.json").write_text(json.dumps({**data, "format": 0}))
    with pytest.raises(UserInputError, match="format"):
        rk.TreeEnsemble.load(tmp_path / "old.json")
    (tmp_path / "other.json").write_text(json.dumps({**data, "features": ["knn"] * len(rk.FEATURES)}))
    with pytest.raises(UserInputError, match="retrain"):
        rk.TreeEnsemble.load(tmp_path / "other.json")
    (tmp_path / "torn.json").write_text(json.dumps({**data, "value": data["value"][:-1]}))
    with pytest.raises(UserInputError, match="corrupt"):
        rk.TreeEnsemble.load(tmp_path / "torn.json")


def test_settings_values():
    assert rk.load_setting("none") is None and rk.load_setting("") is None and rk.load_setting(None) is None
    bundled = rk.load_setting("default")
    assert bundled.features == rk.FEATURES and len(bundled.roots) > 10
    assert bundled.meta["trained_on"]["val_ranker"]["top1"] > bundled.meta["trained_on"]["val_first_stage"]["top1"]


def test_retrieval_with_a_ranker_reorders_and_reports_probabilities(tiny_registry, tmp_path):
    # a ranker that only trusts the prior (popularity) orders the candidates by it
    model, _ = fit(prior_only(), max_iter=30)
    query = "watercolor painting of a fox"
    plain = retrieve_checkpoints(tiny_registry, query, base=parse_base_constraint("any"), k=4)
    ranked = retrieve_checkpoints(tiny_registry, query, base=parse_base_constraint("any"), k=4, ranker=model)
    assert plain[0].version.id == 1003  # the watercolor checkpoint by text
    assert all(0 < c.score < 1 and "ranker" in c.signals for c in ranked)
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    assert ranked[0].signals["prior"] == max(c.signals["prior"] for c in ranked)
    assert ranked[0].version.id != plain[0].version.id


def _pairs_file(path, n_train=40, n_val=12):
    prompts = {
        1003: ("watercolor painting of a {} in a misty forest", 103),
        1002: ("1girl, anime style, {} with cherry blossoms", 102),
        1001: ("portrait photo of a {}, 85mm, film grain", 101),
    }
    subjects = ["fox", "cat", "heron", "old man", "castle", "boat", "owl", "tree"]
    rows = []
    for i in range(n_train + n_val):
        vid = list(prompts)[i % 3]
        text, page = prompts[vid]
        rows.append(
            Pair(
                image_id=i,
                page_model_id=page,
                split="train" if i < n_train else "val",
                instruction=text.format(subjects[i % len(subjects)]),
                target=Target(checkpoint_version_id=vid, checkpoint_model_id=page),
            ).model_dump()
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_ranker_end_to_end_then_the_selector_uses_it(tiny_registry, tiny_registry_path, tmp_path, monkeypatch):
    from diffagent.agent.selector import Selector
    from diffagent.settings import Settings
    from diffagent.tools import SelectOptions

    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "ranker.json"
    report = train_ranker(tiny_registry, pairs, out, work_dir=tmp_path / "work", limit=40, val_limit=12, max_iter=20)
    assert report["train_pairs"] == 40 and report["val_pairs"] == 12 and report["train_positives"] > 0
    assert set(report["val_ranker"]) == {"top1", "top5", "model_top1", "model_top5"}
    saved = json.loads(out.with_suffix(".report.json").read_text())
    assert saved == report
    model = rk.TreeEnsemble.load(out)
    assert model.meta["trained_on"] == report

    # a refit reuses the cached features: no search runs
    monkeypatch.setattr("diffagent.training.ranker.first_stage", lambda *a, **k: pytest.fail("searched again"))
    again = train_ranker(
        tiny_registry, pairs, tmp_path / "r2.json", work_dir=tmp_path / "work", limit=40, val_limit=12, max_iter=20
    )
    assert again["val_ranker"] == report["val_ranker"]
    monkeypatch.undo()

    sel = Selector(tiny_registry, Settings(registry=tiny_registry_path, selector="retrieval", ranker=str(out)))
    choice = sel.select_many("watercolor painting of a heron in a misty forest", SelectOptions(seed=0)).choices[0]
    assert "ranker" in choice.checkpoint.signals and 0 < choice.checkpoint.score < 1


def test_train_ranker_refuses_an_empty_split(tiny_registry, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl", n_train=5, n_val=0)
    with pytest.raises(UserInputError, match="no val pairs"):
        train_ranker(tiny_registry, pairs, tmp_path / "r.json", work_dir=tmp_path / "w", limit=5, val_limit=5)


def test_without_creators_votes_the_search_order_stands(tiny_registry):
    """A registry without sample images (the default one) gives no votes: outside what the ranker learned."""
    from diffagent.agent.retrieve import RetrievalWeights

    assert rk.applies([hit(1, 1, knn=0.0), hit(2, 2, creators=0.2)])
    assert not rk.applies([hit(1, 1, knn=0.0, prior=0.9), hit(2, 2, semantic=0.5)])
    model, _ = fit(prior_only(), max_iter=30)
    no_votes = RetrievalWeights(knn=0.0, creators=0.0)
    query = "watercolor painting of a fox"
    plain = retrieve_checkpoints(tiny_registry, query, base=parse_base_constraint("any"), k=4, weights=no_votes)
    ranked = retrieve_checkpoints(
        tiny_registry, query, base=parse_base_constraint("any"), k=4, weights=no_votes, ranker=model
    )
    assert [c.version.id for c in ranked] == [c.version.id for c in plain]
    assert not any("ranker" in c.signals for c in ranked)


def test_train_ranker_cli(tiny_registry_path, tmp_path, capsys):
    from diffagent.cli import main

    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    rc = main(
        [
            "train",
            "ranker",
            "--pairs",
            str(pairs),
            "--registry",
            str(tiny_registry_path),
            "--work-dir",
            str(tmp_path / "w"),
            "--limit",
            "40",
            "--val-limit",
            "12",
            "--trees",
            "10",
            "--quiet",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trees"] == 10 and report["train_pairs"] == 40
    assert len(rk.TreeEnsemble.load(tmp_path / "w" / "ranker.json").roots) == 10


def test_fit_refuses_data_without_a_single_right_answer():
    data = synthetic(n_pairs=10)
    data.y[:] = 0
    with pytest.raises(UserInputError, match="more pairs"):
        fit(data, max_iter=5)


def test_the_card_pool_joins_the_rankers_pool_and_the_rest_stays_below():
    """Past the first stage's 60, hits the card search added are reranked with the pool; other hits keep their
    search order below it."""
    from diffagent.agent.retrieve import RetrievalWeights, rank_hits

    flat = rk.TreeEnsemble(
        features=rk.FEATURES,
        baseline=0.0,
        roots=np.array([0]),
        feature=np.array([0]),
        threshold=np.array([0.0]),
        left=np.array([0]),
        right=np.array([0]),
        value=np.array([0.0]),
        leaf=np.array([True]),
        meta={},
    )  # every hit scores the same: the card weight decides
    hits = [hit(i, i, knn=0.1, card=0.1) for i in range(rk.POOL)]
    hits += [hit(100, 100, knn=0.0, card=0.9), hit(101, 101, knn=0.0, card=0.8, card_pool=1.0)]
    ranked = rank_hits(hits, k=len(hits), weights=RetrievalWeights(card_ranked=4.0), ranker=flat, named={101})
    order = [c.version.id for c in ranked]
    assert order[0] == 101  # the card pool's hit is ranked with the pool, and its card lifts it
    assert order[-1] == 100  # past the pool without the flag: below every pooled hit


def test_train_ranker_on_one_half_with_a_card_encoder(tiny_registry, tmp_path):
    """The card feature of train pairs comes from an encoder trained on the other half of the train pages, and only
    that half is learned from; two fold encoders cover both halves; an encoder trained on every page is refused."""
    from diffagent.agent.cards import CardEncoder

    zero = {"encoder.layer.0.attention.self.query": (np.zeros((2, 384), np.float32), np.zeros((384, 2), np.float32))}
    name = tiny_registry.embedder.name
    even, odd = (CardEncoder(zero, 1.0, {"embedder": name, "fold": f}) for f in ("even", "odd"))
    pairs = _pairs_file(tmp_path / "pairs.jsonl")  # pages 101 and 103 are odd, 102 even
    train = [json.loads(line) for line in pairs.read_text().splitlines() if json.loads(line)["split"] == "train"]
    n_odd = sum(1 for r in train if r["page_model_id"] % 2)
    report = train_ranker(
        tiny_registry,
        pairs,
        tmp_path / "r.json",
        work_dir=tmp_path / "w",
        limit=40,
        val_limit=12,
        max_iter=10,
        card_folds=[even],
        card_val=even,
    )
    assert report["train_pairs"] == n_odd < 40 and report["train_pages"] == ["odd"] and report["card_pool"] >= 0
    cached = [Collected.load(p) for p in (tmp_path / "w").glob("ranker-features-train-*.npz")]
    assert len(cached) == 1 and cached[0].X[:, rk.FEATURES.index("card")].max() > 0
    both = train_ranker(
        tiny_registry,
        pairs,
        tmp_path / "r2.json",
        work_dir=tmp_path / "w",
        limit=40,
        val_limit=12,
        max_iter=10,
        card_folds=[even, odd],
        card_val=even,
    )
    assert both["train_pairs"] == len(train) and both["train_pages"] == ["odd", "even"]
    with pytest.raises(UserInputError, match="trained on all train pages"):
        train_ranker(
            tiny_registry,
            pairs,
            tmp_path / "r.json",
            work_dir=tmp_path / "w2",
            limit=40,
            card_folds=[CardEncoder(zero, 1.0, {"embedder": name})],
        )


def test_collected_pairs_concatenate():
    a, b = synthetic(n_pairs=3, rows=4), synthetic(n_pairs=2, rows=4, seed=1)
    c = Collected.concat([a, b])
    assert c.pairs == 5 and len(c.y) == len(a.y) + len(b.y)
    assert c.group.tolist() == a.group.tolist() + (b.group + 3).tolist()
    assert agreement(c, -np.arange(len(c.y), dtype=float))["top1"] == pytest.approx(
        (
            agreement(a, -np.arange(len(a.y), dtype=float))["top1"] * 3
            + agreement(b, -np.arange(len(b.y), dtype=float))["top1"] * 2
        )
        / 5,
        abs=1e-3,
    )


def _named_hit(vid, name, trained=(), **signals):
    return SimpleNamespace(
        version=SimpleNamespace(id=vid, model_id=vid, downloads=100, model_name=name, trained_words=list(trained)),
        signals=signals,
    )


class _Shares:
    """A registry whose creators typed "car" in 5 % of their prompts and "ghibli" in 0.01 %."""

    def prompt_word_share(self, word):
        return {"car": 0.05, "ghibli": 0.0001, "photography": 0.02}.get(word, 0.0)


def test_named_by_request_needs_a_distinctive_name_or_trigger_word():
    from diffagent.agent.retrieve import named_by_request

    hits = [
        _named_hit(1, "Studio Ghibli"),
        _named_hit(2, "Lamborghini Photography", ["car"]),
        _named_hit(3, "RealCarMix", ["mycarstyle"]),
        _named_hit(4, "Ghibli Voted", knn=0.4),
        _named_hit(5, "Realistic Mix"),
    ]
    assert named_by_request(_Shares(), "a red car in studio ghibli style", hits) == {1}  # 4 is voted: no need
    assert named_by_request(_Shares(), "mycarstyle, a red car", hits) == {3}  # a trigger word names it too
    assert named_by_request(_Shares(), "a realistic photo, mix of colours", hits) == set()  # generic name words


def test_unvoted_checkpoints_the_request_does_not_name_rank_below_voted_ones():
    """Under the ranker, a hit no creator prompt voted for pays ``unvoted_penalty`` unless the request names it."""
    from diffagent.agent.retrieve import RetrievalWeights, rank_hits

    flat = rk.TreeEnsemble(
        features=rk.FEATURES,
        baseline=0.0,
        roots=np.array([0]),
        feature=np.array([0]),
        threshold=np.array([0.0]),
        left=np.array([0]),
        right=np.array([0]),
        value=np.array([0.0]),
        leaf=np.array([True]),
        meta={},
    )
    hits = [hit(1, 1, knn=0.0, card=0.6), hit(2, 2, knn=0.0, card=0.5), hit(3, 3, knn=0.2, card=0.1)]
    w = RetrievalWeights(card_ranked=4.0, unvoted_penalty=3.0)
    order = [c.version.id for c in rank_hits(hits, k=3, weights=w, ranker=flat, named={2})]
    assert order == [2, 3, 1]  # named: its card wins; unnamed: below the voted one
    off = RetrievalWeights(card_ranked=4.0, unvoted_penalty=0.0)
    assert [c.version.id for c in rank_hits(hits, k=3, weights=off, ranker=flat)] == [1, 2, 3]
