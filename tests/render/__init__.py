"""Renderer tests (tiny models built in conftest; no hub, no network)."""
