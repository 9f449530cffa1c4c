"""Make PyPI's CUDA-linked torchvision 0.28 importable beside the CPU build of torch 2.13.

torchvision's ``__init__`` registers fake (meta) kernels for its compiled ``nms``/``qnms``
ops.  With the CPU torch wheel its C++ library cannot load, so those operators were never
defined and the registration raises ``operator torchvision::nms does not exist``; since
transformers imports torchvision when it is installed, transformers breaks too.

Defining just the two op *schemas* lets the import finish.  Transforms and model
definitions (pure Python) then work; calling the compiled ops themselves (nms, roi_align,
...) or ``torchvision.io`` still fails, and this project uses neither.

The fix must run before anything imports torchvision or transformers, but importing
torch costs seconds that a run with nothing new to embed or train should not pay.  So
importing this module (``tasks/__init__.py`` and ``models/__init__.py`` do) only installs
an import hook: the first import of torchvision or transformers runs ``apply()`` first.
``apply()`` may also be called directly; it is idempotent.
"""

from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# Top-level packages whose import needs the schemas defined first.
_NEEDS_SHIM = {"torchvision", "transformers"}
# Kept referenced at module level: the definitions live as long as the Library object.
_LIB = None
_applied = False


def _has_op(torch, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def apply() -> None:
    """Define the missing torchvision op schemas (imports torch)."""
    global _LIB, _applied
    if _applied:
        return
    _applied = True
    import torch

    missing = {name: schema for name, schema in _SCHEMAS.items() if not _has_op(torch, name)}
    if missing:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for schema in missing.values():
            _LIB.define(schema)


class _ShimFirst(importlib.abc.MetaPathFinder):
    """Runs ``apply()`` when torchvision or transformers is first looked up, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in _NEEDS_SHIM or _applied:
            return None
        torch = sys.modules.get("torch")
        if torch is not None and not hasattr(torch, "library"):
            return None  # torch itself is still initialising (it probes for torchvision): not yet
        apply()
        return None  # the ordinary finders import the package itself


def install() -> None:
    """Put the import hook first on ``sys.meta_path`` (once; a no-op after ``apply()``), so the first import
    of torchvision or transformers runs ``apply()``."""
    if not _applied and not any(isinstance(f, _ShimFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _ShimFirst())


install()
