"""``python -m headless run WORKFLOW ...``: the command line over the in-process runner and the server client."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from echoflow_models.options import add_threads_arg, apply_threads, run_command

from .runner import (
    PACK_NAME,
    ExecutionError,
    WorkflowError,
    apply_overrides,
    is_ui_workflow,
    load_pack,
    pack_object_info,
    run_prompt,
    ui_to_api,
)
from .server import _http, run_on_server


def read_workflow(path: str | os.PathLike) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise WorkflowError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise WorkflowError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowError(f"{path}: expected a JSON object")
    return data


def cmd_run(args: argparse.Namespace) -> int:
    data = read_workflow(args.workflow)
    workflow_ui = data if is_ui_workflow(data) else None
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if not args.server:
        apply_threads(args)  # in-process: this process computes
    if args.server:
        if workflow_ui is not None:
            code, info = _http("GET", args.server.rstrip("/") + "/object_info")
            if code != 200:
                raise SystemExit(f"error: cannot read /object_info from {args.server} ({code})")
            prompt = ui_to_api(workflow_ui, info)
        else:
            prompt = data
        prompt = apply_overrides(prompt, args.set)
        try:
            result = run_on_server(prompt, args.server, output_dir=args.out, workflow=workflow_ui,
                                   timeout=args.timeout, log=log)
        except WorkflowError as exc:
            raise SystemExit(f"error: {exc}") from None
        except KeyboardInterrupt:
            raise SystemExit("interrupted; asked ComfyUI to stop the run") from None
        print(json.dumps({"prompt_id": result["prompt_id"], "files": result["files"]}, indent=2))
        return 0
    try:
        pack = load_pack(args.pack)
        prompt = ui_to_api(workflow_ui, pack_object_info(pack)) if workflow_ui is not None else data
        prompt = apply_overrides(prompt, args.set)
        bridge = importlib.import_module(PACK_NAME + ".nodes.bridge")
        try:
            ui = run_prompt(prompt, pack=pack, output_dir=args.out, device=None if args.device == "auto" else
                            args.device, extra_pnginfo={"workflow": workflow_ui} if workflow_ui else None, log=log)
        except KeyboardInterrupt:
            bridge.clear_interrupt()
            raise SystemExit("interrupted") from None
    except (WorkflowError, ExecutionError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(ui, indent=2, default=str))
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run a ComfyUI workflow (API or UI JSON) in-process or on a ComfyUI server",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workflow", help="workflow JSON (API format, or a UI workflow that is converted)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input (NODE = id, title or unique class; * = every node with that input); "
                        "VALUE is JSON or a plain string. Repeatable.")
    p.add_argument("--server", default=None, help="ComfyUI URL, e.g. http://127.0.0.1:8188 (default: in-process)")
    p.add_argument("--out", default="output", help="output folder (in-process: where nodes save; --server: "
                                                  "where outputs are downloaded). Default ./output")
    p.add_argument("--device", default="auto", help="in-process: cpu, cuda, cuda:1 or auto")
    p.add_argument("--pack", default=None, help="folder of the EchoFlow node pack (default: this checkout)")
    p.add_argument("--timeout", type=float, default=3600, help="--server: seconds to wait for the run")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_threads_arg(p)
    p.set_defaults(func=cmd_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m headless run WORKFLOW ...``."""
    parser = argparse.ArgumentParser(prog="python -m headless", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run_command(parser, argv)
