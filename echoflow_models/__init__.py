"""EchoFlow in pure PyTorch: checkpoint-exact A-VAE, LIFM, ReID and LVFM, flow sampling and the pipeline."""

from . import efnet, lvseg  # noqa: F401  (register EFRegressor and LVSegNet with load_model)
from .checkpoint import CheckpointError, load_model, save_model

__all__ = ["CheckpointError", "load_model", "save_model", "__version__"]
__version__ = "0.1.0"
