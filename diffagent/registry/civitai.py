"""Reading Civitai ``/api/v1/models`` items: one item, an API page, a JSON list, or a JSONL(.gz) dump.

``iter_items`` yields ``(location, item)``; ``item_to_record`` maps an item to a ``ModelRecord``.
Any malformed input raises ``ImportFailed`` naming the line (or item) so nothing is half-imported.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffagent.errors import ImportFailed
from diffagent.prompttext import html_to_text, strip_resource_tags
from diffagent.registry.records import FileRecord, ImageRecord, ModelRecord, VersionRecord, type_name
from diffagent.samplers import canonical_sampler


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def items_from_json(doc: Any, where: str) -> list[dict]:
    """The model items in a parsed JSON document (an item, an API page or a list)."""
    if isinstance(doc, dict) and isinstance(doc.get("items"), list):
        doc = doc["items"]
    elif isinstance(doc, dict) and "modelVersions" in doc:
        return [doc]
    if isinstance(doc, list) and all(isinstance(x, dict) for x in doc):
        return doc
    got = "an object without 'items' or 'modelVersions'" if isinstance(doc, dict) else _describe(doc)
    raise ImportFailed(f"{where}: {got}, not a Civitai model item, API page ({{'items': [...]}}) or list of items")


def _describe(doc: Any) -> str:
    """What a JSON value is, for an error message ("a list of 3 numbers", "a string")."""
    if isinstance(doc, list):
        kinds = {type(x) for x in doc}
        of = {int: "numbers", float: "numbers", str: "strings", list: "lists", dict: "objects"}
        what = of.get(kinds.pop(), "values") if len(kinds) == 1 else "values"
        return f"a list of {len(doc)} {what}"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", type(None): "null"}.get(
        type(doc), type(doc).__name__
    )


@contextlib.contextmanager
def _read_errors(path: Path, n: list[int]) -> Iterator[None]:
    """What a damaged file raises while it is read, as ``ImportFailed`` (``n[0]``: the last line read)."""
    try:
        yield
    except EOFError:
        raise ImportFailed(
            f"{path}: the gzip data ends early (after line {n[0]}); the file is truncated: download or copy it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise ImportFailed(
            f"{path}: not valid gzip data after line {n[0]} ({e}); the file is corrupt: download "
            "or copy it again, or give the uncompressed .jsonl"
        ) from None
    except UnicodeDecodeError as e:
        raise ImportFailed(
            f"{path}: not UTF-8 text (line {n[0] + 1}, byte {e.start}); Civitai exports are UTF-8: "
            "convert the file or give the original export"
        ) from None


def iter_items(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, item)`` from a .json / .jsonl / .jsonl.gz file. A damaged file (truncated or corrupt
    gzip data, bytes that are not UTF-8) raises ``ImportFailed`` naming the file and the last line read."""
    name = path.name.lower()
    n = [0]  # the last line read, for the damaged-file messages
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        with _read_errors(path, n), _open_text(path) as fh:
            for line in fh:
                n[0] += 1
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    what = e.msg.removesuffix(" at")  # "Invalid control character at" already ends in "at"
                    raise ImportFailed(
                        f"{path}:{n[0]}: invalid JSON ({what} at column {e.colno}); "
                        "fix or remove that line and import again"
                    ) from None
                for i, item in enumerate(items_from_json(doc, f"{path}:{n[0]}")):
                    yield f"{path}:{n[0]}" + (f"[{i}]" if i else ""), item
        return
    with _read_errors(path, n), _open_text(path) as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as e:
            raise ImportFailed(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    for i, item in enumerate(items_from_json(doc, str(path))):
        yield f"{path}[{i}]", item


def parse_int(v: Any) -> int | None:
    """A Civitai number field as an int: ``25``, ``"25"``, ``"25,"`` and ``"25.0"`` all give 25; anything
    else (empty, ``"abc"``, NaN) gives None."""
    f = parse_float(v)
    try:
        return int(f) if f is not None else None
    except (ValueError, OverflowError):
        return None


def parse_float(v: Any) -> float | None:
    """A Civitai number field as a float (strings with a trailing comma included), else None."""
    if v is None or v == "":
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(str(v).strip().rstrip(","))
    except ValueError:
        return None


def _size(meta: dict, image: dict) -> tuple[int | None, int | None]:
    size = meta.get("Size")
    if isinstance(size, str) and "x" in size:
        w, _, h = size.partition("x")
        return parse_int(w), parse_int(h)
    return parse_int(image.get("width")), parse_int(image.get("height"))


def image_record(image: dict) -> ImageRecord | None:
    """A sample image with generation metadata; None when it carries no prompt."""
    meta = image.get("meta") or {}
    if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str) or image.get("id") is None:
        return None
    width, height = _size(meta, image)
    resources = [r for r in meta.get("resources") or [] if isinstance(r, dict)]
    return ImageRecord(
        image_id=int(image["id"]),
        prompt=strip_resource_tags(meta["prompt"])[:4000],
        negative_prompt=str(meta.get("negativePrompt") or "")[:4000],
        sampler=canonical_sampler(meta.get("sampler")),
        steps=parse_int(meta.get("steps")),
        cfg_scale=parse_float(meta.get("cfgScale")),
        width=width,
        height=height,
        clip_skip=parse_int(meta.get("Clip skip") or meta.get("clipSkip")),
        model_hash=(meta.get("Model hash") or None),
        nsfw=str(image.get("nsfw") or "None") not in ("None", "false", "False", ""),
        resources=[{k: r[k] for k in ("name", "type", "weight", "hash") if k in r} for r in resources],
    )


def _item_id(value: Any) -> int | None:
    """A model id: an integer, or a string that is exactly one ("25"; not "25.0", "2.5e1" or true)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    n = parse_int(value) if isinstance(value, str) else None
    return n if n is not None and str(n) == value.strip() else None


def item_to_record(item: dict, where: str = "item") -> ModelRecord:
    """Map one Civitai model item to a ``ModelRecord`` (raises ``ImportFailed`` when unusable)."""
    for key in ("id", "name"):
        if key not in item:
            raise ImportFailed(f"{where}: model item lacks a valid '{key}' field")
    model_id = _item_id(item["id"])
    if model_id is None:
        raise ImportFailed(
            f"{where}: model item lacks a valid 'id' field: 'id' must be an integer, got {_describe(item['id'])}"
        )
    name = str(item["name"]).strip()
    versions_in = item.get("modelVersions") or []
    if not isinstance(versions_in, list):
        raise ImportFailed(f"{where}: 'modelVersions' of model {model_id} must be a list, got {_describe(versions_in)}")
    stats = item.get("stats") or {}
    creator = item.get("creator") or {}
    mtype = type_name(item.get("type"))
    rec = ModelRecord(
        id=model_id,
        name=name,
        type=mtype,
        source="civitai",
        description=html_to_text(item.get("description")),
        creator=creator.get("username") if isinstance(creator, dict) else None,
        nsfw=bool(item.get("nsfw")),
        poi=bool(item.get("poi")),
        allow_commercial_use=_commercial(item.get("allowCommercialUse")),
        allow_derivatives=item.get("allowDerivatives"),
        allow_no_credit=item.get("allowNoCredit"),
        allow_different_license=item.get("allowDifferentLicense"),
        downloads=parse_int(stats.get("downloadCount")) or 0,
        favorites=parse_int(stats.get("favoriteCount")) or 0,
        rating=parse_float(stats.get("rating")),
        rating_count=parse_int(stats.get("ratingCount")) or 0,
        tags=[t if isinstance(t, str) else str(t.get("name", "")) for t in item.get("tags") or []],
    )
    for v in versions_in:
        try:
            vid = int(v["id"])
        except (KeyError, TypeError, ValueError):
            raise ImportFailed(f"{where}: a version of model {model_id} has no valid id") from None
        vstats = v.get("stats") or {}
        files = []
        for f in v.get("files") or []:
            if f.get("id") is None:
                continue
            hashes = {k.lower(): val for k, val in (f.get("hashes") or {}).items()}
            meta = f.get("metadata") or {}
            files.append(
                FileRecord(
                    id=int(f["id"]),
                    name=str(f.get("name") or ""),
                    kind=str(f.get("type") or "Model"),
                    size_kb=parse_float(f.get("sizeKB")),
                    format=meta.get("format"),
                    fp=meta.get("fp"),
                    size=meta.get("size"),
                    sha256=(hashes.get("sha256") or None),
                    autov2=(hashes.get("autov2") or None),
                    blake3=(hashes.get("blake3") or None),
                    crc32=(hashes.get("crc32") or None),
                    download_url=f.get("downloadUrl"),
                    primary=bool(f.get("primary")),
                )
            )
        images = [r for r in (image_record(im) for im in v.get("images") or []) if r is not None]
        rec.versions.append(
            VersionRecord(
                id=vid,
                name=str(v.get("name") or ""),
                base_model=str(v.get("baseModel") or "Other"),
                trained_words=[str(w).strip() for w in v.get("trainedWords") or [] if str(w).strip()],
                description=html_to_text(v.get("description"), max_chars=2000),
                created_at=v.get("createdAt"),
                downloads=parse_int(vstats.get("downloadCount")) or 0,
                rating=parse_float(vstats.get("rating")),
                download_url=v.get("downloadUrl"),
                files=files,
                images=images,
            )
        )
    return rec


def _commercial(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(str(x) for x in value)
    return str(value)
