"""EchoFlow's ComfyUI nodes (V1 API). Imported as a sub-package of the pack, never as top-level `nodes`."""

from __future__ import annotations

from . import analysis, loaders, outputs, privacy, sampling, vae_nodes

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (loaders, sampling, privacy, vae_nodes, outputs, analysis):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
