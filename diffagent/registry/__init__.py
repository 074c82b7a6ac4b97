"""The model registry: SQLite tables of real models, their weights, usage statistics and indexes."""

from diffagent.registry.store import Registry, SearchHit, VersionInfo, WeightSource

__all__ = ["Registry", "SearchHit", "VersionInfo", "WeightSource"]
