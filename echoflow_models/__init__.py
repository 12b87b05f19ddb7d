"""EchoFlow in pure PyTorch: checkpoint-exact A-VAE, LIFM, ReID and LVFM, flow sampling and the pipeline."""

from .checkpoint import CheckpointError, load_model, save_model

__all__ = ["CheckpointError", "load_model", "save_model", "__version__"]
__version__ = "0.1.0"
