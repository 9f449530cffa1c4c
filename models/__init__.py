"""One readable file per model: encoders and relevance heads."""

# The torchvision/transformers fix, applied on their first import (tasks/_torchvision_compat.py).
from tasks import _torchvision_compat  # noqa: F401
