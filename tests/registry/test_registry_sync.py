"""``registry sync`` against a loopback server that answers like Civitai's /api/v1/models:
cursor pages via ``metadata.nextPage``, rate limits, server errors, bad keys, empty results."""

from __future__ import annotations

import pytest
from civitai_fixtures import items
from loopback_civitai import Reply
from registry_sql import holds_registry, sql_rows

from diffagent.errors import ImportFailed
from diffagent.registry.sync import fetch_pages, sync


def _page(loopback, rows, cursor: str | None) -> Reply:
    meta = {"pageSize": len(rows)}
    if cursor:
        meta["nextCursor"] = cursor
        meta["nextPage"] = f"{loopback.url}/api/v1/models?limit=4&cursor={cursor}"
    return Reply(200, {"items": rows, "metadata": meta})


def _models(db) -> set[int]:
    return {r[0] for r in sql_rows(db, "SELECT id FROM model")}


def test_sync_follows_pages_through_rate_limits_and_server_errors(loopback, db):
    rows = items()
    loopback.replies = [
        Reply(429, {"error": "Too many requests"}, {"Retry-After": "0"}),
        _page(loopback, rows[:4], "c2"),
        Reply(500, b"oops"),
        _page(loopback, rows[4:8], "c3"),
        _page(loopback, rows[8:], None),
    ]
    slept: list[float] = []
    report = sync(
        db,
        base_url=loopback.url + "/",
        api_key="secret",
        embedder=None,
        params={"types": "Checkpoint"},
        sleep=slept.append,
        backoff=0.25,
    )
    assert report.models == 11
    assert _models(db) == {r["id"] for r in rows}
    assert slept == [0.0, 0.25]  # Retry-After honoured, then exponential backoff from `backoff`
    paths = [s.path for s in loopback.seen]
    assert len(paths) == 5
    assert paths[0].startswith("/api/v1/models?") and "types=Checkpoint" in paths[0] and "limit=100" in paths[0]
    assert paths[2:] == ["/api/v1/models?limit=4&cursor=c2"] * 2 + ["/api/v1/models?limit=4&cursor=c3"]
    assert all(s.headers.get("Authorization") == "Bearer secret" for s in loopback.seen)
    assert "(11 items)" in report.source


def test_sync_without_key_sends_no_authorization(loopback, db):
    loopback.replies = [_page(loopback, items()[:2], None)]
    sync(db, base_url=loopback.url, api_key=None, embedder=None)
    assert "Authorization" not in loopback.seen[0].headers


def test_max_pages_stops_paging(loopback):
    loopback.replies = [_page(loopback, items()[:1], "next")]  # every page says there is another
    pages = list(fetch_pages(loopback.url, max_pages=3, sleep=lambda s: None))
    assert len(pages) == 3 and len(loopback.seen) == 3


def test_rejected_key_is_a_clear_error(loopback, db):
    loopback.replies = [Reply(401, {"error": "Unauthorized"})]
    with pytest.raises(ImportFailed, match="refused the API key.*CIVITAI_API_KEY"):
        sync(db, base_url=loopback.url, api_key="wrong", embedder=None, sleep=lambda s: None)
    assert len(loopback.seen) == 1  # not retried


def test_persistent_server_error_gives_up_and_imports_nothing(loopback, db):
    rows = items()
    loopback.replies = [_page(loopback, rows[:4], "c2"), Reply(503, b"down")]
    slept: list[float] = []
    with pytest.raises(ImportFailed, match="HTTP 503"):
        sync(db, base_url=loopback.url, api_key=None, embedder=None, max_retries=2, backoff=1.0, sleep=slept.append)
    assert slept == [1.0, 2.0]
    assert len(loopback.seen) == 4  # page 1, then page 2 tried 1 + 2 times
    # pages are imported together or not at all
    assert not holds_registry(db) or _models(db) == set()


def test_empty_result_is_an_error(loopback, db):
    loopback.replies = [Reply(200, {"items": [], "metadata": {}})]
    with pytest.raises(ImportFailed, match="returned no models"):
        sync(db, base_url=loopback.url, api_key=None, embedder=None)


def test_answer_that_is_not_a_models_page_is_an_error(loopback, db):
    loopback.replies = [Reply(200, {"message": "hello"})]
    with pytest.raises(ImportFailed, match="did not return a models page"):
        sync(db, base_url=loopback.url, api_key=None, embedder=None)


def test_unreachable_host_is_retried_then_reported(db):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slept: list[float] = []
    with pytest.raises(ImportFailed, match="could not reach"):
        sync(db, base_url=f"http://127.0.0.1:{port}", api_key=None, embedder=None, max_retries=1, sleep=slept.append)
    assert slept == [1.0]
