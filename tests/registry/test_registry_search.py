"""Registry lookups and hybrid search on the tiny synthetic registry: hard filters (type, base
ecosystem, NSFW policy, downloads), ranking on clear cases, prompt neighbours, weight locations."""

from __future__ import annotations

import pytest

from diffagent.errors import NotFoundError
from diffagent.families import Family, parse_base_constraint
from diffagent.registry.store import Registry, query_words

CHECKPOINTS = {1001, 1002, 1003, 1004, 1005}  # SFW ones; 1006 is NSFW
LORAS = {2001, 2002, 2003, 2004}  # 2004 is a LoCon
NSFW_ID = 1006


def _ids(hits) -> set[int]:
    return {h.version.id for h in hits}


def test_nsfw_models_are_excluded_unless_allowed(tiny_registry, tiny_registry_path, embedder):
    assert NSFW_ID not in _ids(tiny_registry.search("photorealistic", limit=50))
    assert NSFW_ID not in _ids(tiny_registry.search("", types=["checkpoint"], limit=50))
    assert NSFW_ID not in tiny_registry.popular(types=["checkpoint"], limit=50)
    assert NSFW_ID in _ids(tiny_registry.search("photorealistic", limit=50, allow_nsfw=True))
    permissive = Registry.open(tiny_registry_path, allow_nsfw=True, embedder=embedder)
    try:
        assert NSFW_ID in _ids(permissive.search("adult merge", types=["checkpoint"], limit=50))
        # the most downloaded checkpoint is the NSFW one
        assert permissive.popular(types=["checkpoint"], limit=1) == [NSFW_ID]
    finally:
        permissive.close()


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (["checkpoint"], CHECKPOINTS),
        (["lora"], LORAS),  # 'lora' also means LoCon/LyCORIS
        (["locon"], {2004}),
        (["embedding"], {3001}),
        (["checkpoint", "embedding"], CHECKPOINTS | {3001}),
        (["vae"], set()),
    ],
)
def test_type_filter(tiny_registry, types, expected):
    assert _ids(tiny_registry.search("style", types=types, limit=50)) == expected


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("sdxl", {1004, 1005, 2003}),  # 1005 is Pony: same ecosystem as SDXL
        ("sd15", {1001, 1002, 1003, 2001, 2002, 2004, 3001}),
        ("any", CHECKPOINTS | LORAS | {3001}),
    ],
)
def test_base_filter(tiny_registry, base, expected):
    assert _ids(tiny_registry.search("detailed image", base=parse_base_constraint(base), limit=50)) == expected


def test_min_downloads_filter(tiny_registry):
    hits = tiny_registry.search("anime", min_downloads=50_000, limit=50)
    assert _ids(hits) == {1001, 1002, 1004, 1005, 3001}
    assert all(h.version.downloads >= 50_000 for h in hits)


def test_filters_combine(tiny_registry):
    hits = tiny_registry.search("anime girl", types=["checkpoint"], base={"sdxl"}, min_downloads=60_000, limit=50)
    assert _ids(hits) == {1004}


@pytest.mark.parametrize(
    ("query", "types", "best"),
    [
        ("watercolor painting of a fox in a misty forest", ["checkpoint"], 1003),
        ("1girl, school uniform, anime style", ["checkpoint"], 1002),
        ("cinematic photo of a lighthouse, sdxl", ["checkpoint"], 1004),
        ("retro pixel art sprite of a knight", ["lora"], 2004),
        ("analog film grain photo", ["lora"], 2001),
    ],
)
def test_clear_queries_rank_the_obvious_model_first(tiny_registry, query, types, best):
    hits = tiny_registry.search(query, types=types, limit=3)
    assert hits[0].version.id == best
    assert set(hits[0].signals) == {"prior", "lexical", "semantic", "prompts", "knn", "creators"}
    assert hits[0].score >= hits[-1].score


def test_empty_query_ranks_by_popularity(tiny_registry):
    hits = tiny_registry.search("", types=["checkpoint"], limit=5)
    assert [h.version.id for h in hits] == [1001, 1004, 1002, 1005, 1003]
    assert [h.version.id for h in hits] == tiny_registry.popular(types=["checkpoint"], limit=5)
    assert set(hits[0].signals) == {"prior"}


def test_limit_is_respected(tiny_registry):
    assert len(tiny_registry.search("model", limit=2)) == 2


def test_queries_with_fts_syntax_are_safe(tiny_registry):
    for q in ['"unbalanced', "NEAR(a b)", "a OR b AND -c*", "(masterpiece:1.2), best quality", "^~:;"]:
        tiny_registry.search(q, limit=3)
    assert query_words("the best quality masterpiece") == []
    assert query_words('Fox "fox" forest') == ["fox", "forest"]


def test_prompt_neighbours_vote_for_checkpoints_with_similar_prompts(tiny_registry):
    votes = tiny_registry.prompt_neighbours("rainy tokyo street at night, neon")
    assert max(votes, key=votes.get) == 1001
    assert max(votes.values()) == 1.0
    assert all(0 < v <= 1 for v in votes.values())
    anime = tiny_registry.prompt_neighbours("1boy samurai anime screencap")
    assert max(anime, key=anime.get) == 1002
    assert tiny_registry.prompt_neighbours("zeppelin") == {}
    assert tiny_registry.prompt_neighbours("the of and") == {}


def test_version_lookup_and_refs(tiny_registry):
    v = tiny_registry.version(1005)
    assert (v.model_name, v.type, v.base_model, v.family) == ("XL Anime", "checkpoint", "Pony", Family.PONY)
    assert v.trained_words == ["score_9", "score_8_up"]
    assert v.usage is not None and v.usage.n_images == 1
    assert [f.name for f in v.files] == ["xlanime_v1.safetensors"]
    ref = tiny_registry.model_ref(1005)
    assert (ref.id, ref.air, ref.family) == (1005, "urn:air:sdxl:checkpoint:civitai:105@1005", Family.PONY)


def test_weight_source_names_the_primary_model_file(tiny_registry):
    ws = tiny_registry.weight_source(1001)
    assert ws.filename == "photonreal_v1.safetensors"
    assert ws.format == "SafeTensor"
    assert ws.sha256 == ws.sha256.upper() and len(ws.sha256) == 64
    assert ws.download_url == "https://civitai.com/api/download/models/10010"
    assert ws.family == Family.SD1 and ws.type == "checkpoint"


def test_unknown_id_is_not_found(tiny_registry):
    with pytest.raises(NotFoundError, match="unknown model id 424242"):
        tiny_registry.version(424242)
    with pytest.raises(NotFoundError):
        tiny_registry.weight_source(424242)
    assert tiny_registry.versions([424242, 1001]).keys() == {1001}


def test_vector_products_run_on_one_blas_thread_and_restore_it():
    """OpenBLAS threads left spinning after a search slow the LLM call that follows (see one_blas_thread)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from diffagent.blas import one_blas_thread

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):  # the tests run with OMP_NUM_THREADS=1
        before = blas_threads()
        assert set(before.values()) == {2}
        with one_blas_thread():
            assert set(blas_threads().values()) == {1}
        assert blas_threads() == before
