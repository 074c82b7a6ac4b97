"""Fakes for the MCP server and LangChain adapter tests: a registry, a selector and a renderer with
the real interfaces (``Registry.version/search``, ``Selector.select``, ``diffagent.render.render``) but
no models, so protocol wiring is tested in milliseconds. End-to-end tests with the real pieces live in
tests/server/test_mcp_e2e.py.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from diffagent.apicall import ApiCall, LoraRef
from diffagent.errors import NotFoundError
from diffagent.families import Family
from diffagent.registry.store import SearchHit, VersionInfo
from diffagent.settings import Settings
from diffagent.tools import SelectOptions


def _version(id: int, name: str, type: str, family: Family = Family.SD1) -> VersionInfo:
    return VersionInfo(
        id=id,
        model_id=id * 10,
        name="v1",
        model_name=name,
        type=type,
        base_model="SD 1.5",
        family=family,
        air=f"urn:air:sd1:{type}:civitai:{id * 10}@{id}",
        trained_words=["tw"] if type == "lora" else [],
        tags=["test"],
        description="",
        creator=None,
        nsfw=False,
        downloads=1000 - id,
        rating=None,
        recommended={},
        hf_repo=None,
        hf_file=None,
        download_url=None,
        local_path=None,
    )


class FakeRegistry:
    def __init__(self) -> None:
        self.versions = {
            1: _version(1, "Dreamy Checkpoint", "checkpoint"),
            2: _version(2, "Ink LoRA", "lora"),
            3: _version(3, "XL Checkpoint", "checkpoint", Family.SDXL),
        }

    def version(self, version_id: int, *, with_files: bool = True) -> VersionInfo:
        if version_id not in self.versions:
            raise NotFoundError(f"unknown model id {version_id}; call search_models to find registry ids")
        return self.versions[version_id]

    def search(self, query, types=None, base=None, min_downloads=0, limit=20):
        hits = [
            SearchHit(version=v, score=1.0 / v.id, signals={})
            for v in self.versions.values()
            if (not types or v.type in types) and v.downloads >= min_downloads
        ]
        return hits[:limit]


class FakeSelector:
    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry

    def select(self, prompt: str, options: SelectOptions) -> ApiCall:
        ck = self.registry.versions[1]
        lora = self.registry.versions[2]
        loras = [LoraRef(**lora.ref().model_dump(), weight=0.8)][: options.max_loras]
        return ApiCall(
            checkpoint=ck.ref(),
            loras=loras,
            prompt=prompt,
            steps=4,
            width=64,
            height=64,
            seed=options.seed or 7,
            rationale="fake",
        )


class ModuleRenderer:
    """The runtime's renderer in these tests: ``diffagent.render.render``, which the fixtures replace."""

    def __init__(self, settings: Settings, registry) -> None:
        self.settings, self.registry = settings, registry

    def render(self, call: ApiCall, *, progress=None, cancel=None, output_dir=None):
        import diffagent.render

        return diffagent.render.render(
            call,
            settings=self.settings,
            registry=self.registry,
            progress=progress,
            cancel=cancel,
            output_dir=output_dir,
        )


class FakeRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = FakeRegistry()
        self.selector = FakeSelector(self.registry)
        self.renderer = ModuleRenderer(settings, self.registry)

    @property
    def scorer(self):
        from diffagent.scoring.config import ScoringConfig
        from diffagent.scoring.unified import UnifiedScorer

        return UnifiedScorer.from_config(ScoringConfig.from_settings(self.settings))


class RenderCancelled(Exception):
    pass


@dataclass
class FakeRenderResult:
    path: Path
    preview_png: bytes
    parameters: str
    seconds: float
    call: ApiCall


class FakeRenderer:
    """``render()`` with the real signature: sleeps ``step_s`` per step, honours ``cancel``."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.stopped_at: int | None = None
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, call: ApiCall, *, settings=None, registry=None, progress=None, cancel=None, output_dir=None):
        with self.lock:  # the server must never run two renders at once
            self.calls += 1
            t0 = time.monotonic()
            for i in range(call.steps):
                if cancel is not None and cancel.is_set():
                    self.stopped_at = i
                    raise RenderCancelled(f"cancelled at step {i}")
                time.sleep(self.step_s)
                if progress:
                    progress(i + 1, call.steps)
            buf = io.BytesIO()
            Image.new("RGB", (call.width, call.height), "red").save(buf, format="PNG")
            output_dir.mkdir(parents=True, exist_ok=True)
            path = output_dir / f"img-{self.calls:04d}.png"
            path.write_bytes(buf.getvalue())
            return FakeRenderResult(path, buf.getvalue(), call.a1111_parameters(), time.monotonic() - t0, call)
