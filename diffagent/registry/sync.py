"""``registry sync``: page through the live Civitai ``/api/v1/models`` API and import the result.

Pages are collected first and imported in one transaction, so a sync cut short by the network
imports nothing. Rate limits (HTTP 429, 5xx) are retried with ``Retry-After`` or exponential backoff.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from diffagent.errors import ImportFailed
from diffagent.registry.embeddings import Embedder
from diffagent.registry.importer import ImportReport, import_path
from diffagent.registry.location import Location

RETRY_STATUSES = {429, 500, 502, 503, 504}


def fetch_pages(
    base_url: str,
    *,
    api_key: str | None = None,
    params: dict | None = None,
    max_pages: int = 10,
    max_retries: int = 5,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
):
    """Yield item lists from successive API pages (cursor or page based ``metadata.nextPage``)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url: str | None = base_url.rstrip("/") + "/api/v1/models"
    query = {"limit": 100, "sort": "Most Downloaded", **(params or {})}
    own = client is None
    client = client or httpx.Client(timeout=60, follow_redirects=True)
    try:
        for _ in range(max_pages):
            if url is None:
                return
            for attempt in range(max_retries + 1):
                try:
                    resp = client.get(url, params=query, headers=headers)
                except httpx.TransportError as e:
                    if attempt == max_retries:
                        raise ImportFailed(f"could not reach {url}: {e}") from None
                    sleep(backoff * 2**attempt)
                    continue
                if resp.status_code in RETRY_STATUSES and attempt < max_retries:
                    retry_after = resp.headers.get("Retry-After")
                    delay = float(retry_after) if retry_after and retry_after.isdigit() else backoff * 2**attempt
                    sleep(min(delay, 120.0))
                    continue
                if resp.status_code == 401:
                    raise ImportFailed("Civitai refused the API key (HTTP 401); set CIVITAI_API_KEY to a valid key")
                if resp.status_code != 200:
                    raise ImportFailed(f"{resp.request.url} answered HTTP {resp.status_code}; try again later")
                break
            try:
                page = resp.json()
                items = page["items"]
            except (ValueError, KeyError, TypeError):
                raise ImportFailed(f"{resp.request.url} did not return a models page") from None
            yield items
            meta = page.get("metadata") or {}
            url, query = meta.get("nextPage"), None
    finally:
        if own:
            client.close()


def sync(
    registry: Location,
    *,
    base_url: str,
    api_key: str | None,
    embedder: Embedder | None,
    params: dict | None = None,
    max_pages: int = 10,
    progress: bool = False,
    **fetch_kwargs,
) -> ImportReport:
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "sync.jsonl.gz"
        n = 0
        with gzip.open(dump, "wt", encoding="utf-8") as fh:
            for items in fetch_pages(base_url, api_key=api_key, params=params, max_pages=max_pages, **fetch_kwargs):
                for item in items:
                    fh.write(json.dumps(item) + "\n")
                    n += 1
        if n == 0:
            raise ImportFailed(f"{base_url} returned no models; nothing to import")
        report = import_path(dump, registry, embedder=embedder, progress=progress)
        report.source = f"{base_url} ({n} items)"
        return report
