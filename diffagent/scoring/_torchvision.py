"""Make ``import torchvision`` work when a CUDA-built PyPI torchvision sits next to CPU torch.

open_clip and ImageReward import torchvision transforms. The PyPI torchvision wheel links its C
extension against libtorch_cuda, which a CPU torch lacks; its ``_meta_registrations`` then calls
``register_fake("torchvision::nms")`` on an operator that was never defined and the import dies
with ``RuntimeError: operator torchvision::nms does not exist``. Defining the two schemas first
lets the import finish: transforms work, only detection ops (nms) stay unavailable, and the
scorers use none. The shim runs only after a failed import, so it is a no-op on a healthy
install (CUDA production, or a matching CPU torchvision).
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_library = None  # keeps the op library alive for the life of the process


def ensure_torchvision() -> str:
    """Import torchvision, shimming the missing op schemas if needed. Returns 'native' or 'shimmed'."""
    global _library
    with _lock:
        try:
            import torchvision  # noqa: F401

            return "native" if _library is None else "shimmed"
        except RuntimeError as e:
            if "torchvision::nms" not in str(e):
                raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        import torch

        _library = torch.library.Library("torchvision", "DEF")
        _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401,F811

        return "shimmed"
