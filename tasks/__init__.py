"""Plain typed functions, one stage each; the flows in ``flows/`` wire them together."""

# Before anything imports torchvision or transformers: installs the hook that fixes them
# up on first import, without importing torch now (see the module's docstring).
from tasks import _torchvision_compat  # noqa: F401
