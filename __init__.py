"""ComfyUI entry point of the EchoFlow node pack (V1 API).

ComfyUI imports this folder by path (``custom_nodes/comfyui-echoflow/__init__.py``); the pure-PyTorch
library ``echoflow_models`` ships inside the same folder, so it is made importable here without putting
the pack folder on ``sys.path`` (that would let the pack's ``nodes`` shadow ComfyUI's own ``nodes``).
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _ensure_echoflow_models() -> None:
    if "echoflow_models" in sys.modules:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    local = os.path.join(here, "echoflow_models", "__init__.py")
    if os.path.isfile(local):
        spec = importlib.util.spec_from_file_location(
            "echoflow_models", local, submodule_search_locations=[os.path.dirname(local)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["echoflow_models"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["echoflow_models"]
            raise
    else:  # a pip-installed echoflow_models
        importlib.import_module("echoflow_models")


_ensure_echoflow_models()

if __package__:  # ComfyUI (and tests/test_nodes.py) import this folder as a package
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a plain module: pytest does that to a checkout whose folder name is not a Python
    # identifier (e.g. a `mktemp -d` clone, `tmp.AbC123`). There is no package to import the nodes from,
    # and nothing is registered from here then.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
