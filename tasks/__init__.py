"""Plain typed functions, one stage each; the flows in ``flows/`` wire them together."""

# Must run before anything imports torchvision or transformers (see the module's docstring).
from tasks import _torchvision_compat  # noqa: F401
