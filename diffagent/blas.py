"""Keep numpy's BLAS on one thread around the request path's matrix products.

OpenBLAS threads spin for a while after a product, on the cores llama.cpp is about to use: on the
2-core machine, the 27k x 384 vector products of a search over the Civitai dump, run on 2 threads,
slowed the LLM's prompt evaluation that follows from ~300 to 370-450 ms (select p50 large/default 1.3,
against 1.06 with one thread). One thread costs ~1.6 ms a product there. The numpy query encoder
(``registry/bert.py``) runs under the same limit, for the same reason.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_controller = None
_modules_seen = -1


def one_blas_thread():
    """A context in which every loaded BLAS runs on one thread (restored on exit)."""
    global _controller, _modules_seen
    with _lock:
        # the scan of loaded libraries is cached, and repeated when modules were imported since: scipy and
        # scikit-learn, imported lazily by the first search, bring a BLAS of their own
        if _controller is None or len(sys.modules) != _modules_seen:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
            _modules_seen = len(sys.modules)
    return _controller.limit(limits=1, user_api="blas")
