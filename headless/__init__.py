"""Headless ComfyUI for this pack: run its workflows in-process (its own nodes, no server) or through a
running ComfyUI server. Part of the pack, not of the installed library; from the pack folder:

    python -m headless run WORKFLOW.json [--set NODE.INPUT=VALUE ...] [--out DIR] [--server URL]

runner.py: the pack, UI -> API conversion, --set overrides, validation, in-process execution;
server.py: the ComfyUI server client; cli.py: the command line.
"""

from .cli import cmd_run, main
from .runner import (
    PACK_NAME,
    ExecutionError,
    WorkflowError,
    apply_overrides,
    find_node,
    is_ui_workflow,
    is_widget,
    load_pack,
    node_info,
    pack_dir,
    pack_object_info,
    run_prompt,
    ui_to_api,
    validate_prompt,
    widget_layout,
)
from .server import MiniWebSocket, run_on_server

__all__ = [
    "PACK_NAME", "ExecutionError", "MiniWebSocket", "WorkflowError", "apply_overrides", "cmd_run", "find_node",
    "is_ui_workflow", "is_widget", "load_pack", "main", "node_info", "pack_dir", "pack_object_info", "run_on_server",
    "run_prompt", "ui_to_api", "validate_prompt", "widget_layout",
]
