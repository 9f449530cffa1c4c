"""Make PyPI's CUDA-linked torchvision 0.28 importable beside the CPU build of torch 2.13.

torchvision's ``__init__`` registers fake (meta) kernels for its compiled ``nms``/``qnms``
ops.  With the CPU torch wheel its C++ library cannot load, so those operators were never
defined and the registration raises ``operator torchvision::nms does not exist``; since
transformers imports torchvision when it is installed, transformers breaks too.

Defining just the two op *schemas* lets the import finish.  Transforms and model
definitions (pure Python) then work; calling the compiled ops themselves (nms, roi_align,
...) or ``torchvision.io`` still fails, and this project uses neither.  Import this module
before anything that may import torchvision or transformers: ``tasks/__init__.py`` does.
"""

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


_missing = {name: schema for name, schema in _SCHEMAS.items() if not _has_op(name)}
if _missing:
    # Kept referenced at module level: the definitions live as long as the Library object.
    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for _schema in _missing.values():
        _LIB.define(_schema)
