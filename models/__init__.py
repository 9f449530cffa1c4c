"""One readable file per model: encoders and relevance heads."""

from tasks import _torchvision_compat  # noqa: F401
