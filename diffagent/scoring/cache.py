"""Process-wide cache of loaded scorer models: each set of weights is loaded once per process.

Scorer objects are cheap and may be created per request; the multi-GB models behind them are
not. A model is keyed by everything that determines it (architecture, resolved weight paths,
device), so two scorers with the same configuration share one model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

_models: dict[Hashable, Any] = {}
_locks: dict[Hashable, threading.Lock] = {}
_guard = threading.Lock()


def load_once(key: Hashable, factory: Callable[[], Any]) -> Any:
    """The cached value for ``key``, calling ``factory`` only the first time (thread-safe)."""
    with _guard:
        if key in _models:
            return _models[key]
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # per-key lock: loading one model does not block lookups of others
        if key not in _models:
            _models[key] = factory()
        return _models[key]


def clear() -> None:
    """Forget every cached model (tests; freeing memory in a long-lived process)."""
    with _guard:
        _models.clear()
        _locks.clear()


def cached_keys() -> list[Hashable]:
    with _guard:
        return list(_models)
