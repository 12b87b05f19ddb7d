"""Headless EchoFlow: run this pack's ComfyUI workflows without a browser (from the pack folder).

    python -m headless run WORKFLOW.json [--set NODE.INPUT=VALUE ...] [--out DIR]     in-process, this pack's nodes
    python -m headless run WORKFLOW.json --server http://127.0.0.1:8188 [--out DIR]   through a running ComfyUI

WORKFLOW.json is an API-format prompt (ComfyUI "Export (API)") or a UI workflow (converted with the node
definitions: the pack's own in-process, the server's ``/object_info`` with ``--server``).

The server client (websocket, ``/prompt``, ``/view``) is in ``server.py``. The in-process runner imports the
pack's ``nodes`` sub-package by path under the private package name
``echoflow_comfy_pack`` (never as a top-level ``nodes``, which is ComfyUI's), so it needs the source
checkout (or the ComfyUI custom_nodes folder): pass ``--pack DIR`` or set ``ECHOFLOW_PACK_DIR`` otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACK_NAME = "echoflow_comfy_pack"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


class WorkflowError(RuntimeError):
    """A workflow that cannot run as given; the message names the node and input."""


# ============================================================================================ the pack
def pack_dir(explicit: str | os.PathLike | None = None) -> Path:
    candidates = [explicit, os.environ.get("ECHOFLOW_PACK_DIR"), Path(__file__).resolve().parent.parent]
    for cand in candidates:
        if cand and (Path(cand) / "__init__.py").is_file() and (Path(cand) / "nodes").is_dir():
            return Path(cand).resolve()
    raise WorkflowError(
        "the in-process runner needs the EchoFlow node pack (its nodes/ folder): run from the source checkout, "
        "pass --pack /path/to/comfyui-echoflow, set ECHOFLOW_PACK_DIR, or use --server with a running ComfyUI"
    )


def load_pack(explicit: str | os.PathLike | None = None):
    """Import the pack (``__init__.py`` + ``nodes/``) as ``echoflow_comfy_pack``; cached."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    root = pack_dir(explicit)
    spec = importlib.util.spec_from_file_location(PACK_NAME, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(PACK_NAME, None)
        raise
    return module


def node_info(name: str, cls: type, display: str | None = None) -> dict:
    """What ComfyUI's ``/object_info`` reports for a V1 node class."""
    spec = cls.INPUT_TYPES()
    return {
        "input": spec,
        "input_order": {k: list(v.keys()) for k, v in spec.items()},
        "output": list(cls.RETURN_TYPES),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": name,
        "display_name": display or name,
        "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "output_tooltips": list(getattr(cls, "OUTPUT_TOOLTIPS", [])),
        "search_aliases": list(getattr(cls, "SEARCH_ALIASES", [])),
    }


def pack_object_info(pack=None) -> dict:
    pack = pack or load_pack()
    return {k: node_info(k, c, pack.NODE_DISPLAY_NAME_MAPPINGS.get(k)) for k, c in pack.NODE_CLASS_MAPPINGS.items()}


# ================================================================================= UI -> API conversion
def is_widget(spec: tuple | list) -> bool:
    """Whether an input is shown as a widget (and so has a value in ``widgets_values``)."""
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"


def has_control_widget(name: str, spec: tuple | list) -> bool:
    """The frontend adds a 'control after generate' widget (its value follows in widgets_values)."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def widget_layout(info: dict) -> list[tuple[str, bool]]:
    """[(input name, is_control_value)] in ``widgets_values`` order."""
    out = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            if is_widget(spec):
                out.append((name, False))
                if has_control_widget(name, spec):
                    out.append((name, True))
    return out


def is_ui_workflow(data: dict) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a v0.4 UI workflow to an API prompt the way the frontend's graphToPrompt does (positional
    widget values, links by origin node/slot, muted nodes dropped). Bypassed nodes and subgraphs are refused."""
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        mode = node.get("mode", 0)
        if mode == 2:  # muted
            continue
        if mode == 4:
            raise WorkflowError(f"node {node['id']} ({node['type']}) is bypassed; un-bypass or remove it")
        ctype = node["type"]
        if ctype in ("Reroute", "Note", "MarkdownNote", "PrimitiveNode"):
            if ctype in ("Note", "MarkdownNote"):
                continue
            raise WorkflowError(f"node {node['id']}: {ctype} nodes are not supported by this converter")
        if ctype not in object_info:
            raise WorkflowError(f"node {node['id']}: unknown node type {ctype!r} (is its pack installed?)")
        info = object_info[ctype]
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values", [])
        if isinstance(values, dict):
            for name, _ctl in widget_layout(info):
                if name in values:
                    inputs[name] = values[name]
        else:
            layout = widget_layout(info)
            missing = layout[len(values):]
            optional = set(info["input_order"].get("optional", []))
            if missing and all(name in optional for name, _control in missing):
                # optional widgets the node gained after the workflow was saved: like the frontend, leave them
                # at their defaults (the node's function defaults), so older workflows keep running
                layout = layout[:len(values)]
            if len(values) != len(layout):
                raise WorkflowError(
                    f"node {node['id']} ({ctype}): {len(values)} widget values but the node has {len(layout)} "
                    f"widgets ({', '.join(n + (' (control)' if c else '') for n, c in layout)})"
                )
            for (name, control), value in zip(layout, values, strict=True):
                if not control:
                    inputs[name] = value
        for slot in node.get("inputs", []):
            link = slot.get("link")
            if link is None:
                continue
            if link not in links:
                raise WorkflowError(f"node {node['id']} input {slot['name']}: link {link} does not exist")
            origin, origin_slot = links[link]
            if origin not in nodes:
                raise WorkflowError(f"node {node['id']} input {slot['name']}: source node {origin} is missing")
            if nodes[origin].get("mode", 0) == 2:
                continue
            inputs[slot["name"]] = [str(origin), origin_slot]
        entry = {"inputs": inputs, "class_type": ctype}
        title = node.get("title") or info.get("display_name")
        if title:
            entry["_meta"] = {"title": title}
        prompt[str(node["id"])] = entry
    return prompt


# ===================================================================================== --set overrides
def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def find_node(prompt: dict, ref: str) -> str:
    if ref in prompt:
        return ref
    by_title = [k for k, v in prompt.items() if v.get("_meta", {}).get("title") == ref]
    by_class = [k for k, v in prompt.items() if v.get("class_type") == ref]
    for matches in (by_title, by_class):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise WorkflowError(f"--set: {ref!r} matches nodes {', '.join(matches)}; use the node id")
    raise WorkflowError(f"--set: no node with id, title or class {ref!r} (ids: {', '.join(prompt)})")


def apply_overrides(prompt: dict, sets: list[str]) -> dict:
    """``NODE.INPUT=VALUE`` (NODE: id, title or unique class; VALUE: JSON, else a string). ``*.INPUT=VALUE``
    sets the input on every node that has it."""
    prompt = json.loads(json.dumps(prompt))
    for item in sets or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise WorkflowError(f"--set {item!r}: expected NODE.INPUT=VALUE")
        target, value = item.split("=", 1)
        ref, name = target.rsplit(".", 1)
        value = parse_value(value)
        if ref == "*":
            hits = [k for k, v in prompt.items() if name in v.get("inputs", {})]
            if not hits:
                raise WorkflowError(f"--set {item!r}: no node has an input {name!r}")
            for k in hits:
                prompt[k]["inputs"][name] = value
            continue
        prompt[find_node(prompt, ref)].setdefault("inputs", {})[name] = value
    return prompt


# ========================================================================================= validation
def _check_value(name: str, spec: tuple | list, value: Any) -> tuple[Any, str | None]:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options", [])
        if value not in options:
            shown = ", ".join(map(str, options[:12])) + (", ..." if len(options) > 12 else "")
            return value, f"{name}: {value!r} is not one of [{shown}]"
        return value, None
    try:
        if kind == "INT":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind == "FLOAT":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind == "STRING":
            if not isinstance(value, str):
                raise ValueError
        elif kind == "BOOLEAN":
            if not isinstance(value, bool):
                raise ValueError
    except (TypeError, ValueError):
        return value, f"{name}: {value!r} is not a valid {kind}"
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return value, f"{name}: {value} is below the minimum {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return value, f"{name}: {value} is above the maximum {opts['max']}"
    return value, None


def validate_prompt(prompt: dict, classes: dict[str, type]) -> tuple[dict, dict[str, list[str]]]:
    """ComfyUI-style checks: known types, required inputs, link targets and types, combo values and ranges.
    Returns (prompt with coerced literals, {node id: [errors]})."""
    errors: dict[str, list[str]] = {}
    clean = json.loads(json.dumps(prompt))
    if not isinstance(prompt, dict) or not prompt:
        raise WorkflowError("the workflow is empty or not an API-format prompt")
    for nid, node in clean.items():
        errs = errors.setdefault(nid, [])
        ctype = node.get("class_type") if isinstance(node, dict) else None
        if ctype is None:
            errs.append("no class_type (is this a UI workflow? it is converted automatically)")
            continue
        if ctype not in classes:
            errs.append(f"node type {ctype!r} cannot run in-process (only this pack's nodes can: "
                        f"{', '.join(sorted(classes))}); run it with --server on a ComfyUI that has it")
            continue
        spec = classes[ctype].INPUT_TYPES()
        inputs = node.setdefault("inputs", {})
        for section in ("required", "optional"):
            for name, ispec in spec.get(section, {}).items():
                if name not in inputs:
                    if section == "required":
                        errs.append(f"{name}: required input missing")
                    continue
                value = inputs[name]
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) \
                        and isinstance(value[1], int):
                    src = clean.get(value[0])
                    if src is None:
                        errs.append(f"{name}: linked to missing node {value[0]}")
                        continue
                    src_cls = classes.get(src.get("class_type"))
                    if src_cls is None:
                        continue  # reported on that node
                    outs = src_cls.RETURN_TYPES
                    if not 0 <= value[1] < len(outs):
                        errs.append(f"{name}: node {value[0]} has no output {value[1]}")
                        continue
                    want = "COMBO" if isinstance(ispec[0], list) else ispec[0]
                    if outs[value[1]] != want and "*" not in (outs[value[1]], want):
                        errs.append(f"{name}: expects {want} but node {value[0]} output {value[1]} is "
                                    f"{outs[value[1]]}")
                    continue
                if not is_widget(ispec) and not isinstance(ispec[0], list):
                    errs.append(f"{name}: must be linked to a {ispec[0]} output, got the literal {value!r}")
                    continue
                inputs[name], err = _check_value(name, ispec, value)
                if err:
                    errs.append(err)
    return clean, {k: v for k, v in errors.items() if v}


# ========================================================================================== execution
class ExecutionError(RuntimeError):
    def __init__(self, node_id: str, class_type: str, exc: BaseException):
        self.node_id, self.class_type, self.original = node_id, class_type, exc
        super().__init__(f"node {node_id} ({class_type}) failed: {type(exc).__name__}: {exc}")


def _output_nodes(prompt: dict, classes: dict[str, type]) -> list[str]:
    outs = [k for k, v in prompt.items() if getattr(classes[v["class_type"]], "OUTPUT_NODE", False)]
    if not outs:
        raise WorkflowError("the workflow has no output node (Save Video, Save EchoNet Dataset, Estimate EF)")
    return outs


def run_prompt(
    prompt: dict,
    *,
    pack=None,
    output_dir: str | os.PathLike = "output",
    extra_pnginfo: dict | None = None,
    device: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, dict]:
    """Execute an API prompt in-process with this pack's nodes; returns ``{node id: ui output}`` like
    ComfyUI's ``/history`` outputs. Nodes run once each, in dependency order, only if an output needs them."""
    pack = pack or load_pack()
    classes = pack.NODE_CLASS_MAPPINGS
    clean, errors = validate_prompt(prompt, classes)
    if errors:
        lines = [f"  node {k} ({clean.get(k, {}).get('class_type', '?')}): {e}" for k, es in errors.items() for e in es]
        raise WorkflowError("the workflow does not validate:\n" + "\n".join(lines))
    bridge = importlib.import_module(PACK_NAME + ".nodes.bridge")
    bridge.set_output_directory(output_dir)
    bridge.set_device(device)
    results: dict[str, tuple] = {}
    ui_out: dict[str, dict] = {}
    visiting: set[str] = set()

    def listener(label: str, done: int, total: int) -> None:
        if log and (done == total or done == 1 or done % max(1, total // 10) == 0):
            log(f"    {label}: {done}/{total}")

    def execute(nid: str) -> tuple:
        if nid in results:
            return results[nid]
        if nid in visiting:
            raise WorkflowError(f"the workflow has a cycle through node {nid}")
        visiting.add(nid)
        node = clean[nid]
        cls = classes[node["class_type"]]
        kwargs = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
                kwargs[name] = execute(value[0])[value[1]]
            else:
                kwargs[name] = value
        hidden = cls.INPUT_TYPES().get("hidden", {})
        for name, kind in hidden.items():
            kwargs[name] = {"PROMPT": clean, "EXTRA_PNGINFO": extra_pnginfo or {}, "UNIQUE_ID": nid}.get(kind)
        known = set(cls.INPUT_TYPES().get("required", {})) | set(cls.INPUT_TYPES().get("optional", {})) | set(hidden)
        kwargs = {k: v for k, v in kwargs.items() if k in known}
        title = node.get("_meta", {}).get("title", node["class_type"])
        if log:
            log(f"[{nid}] {title}")
        start = time.perf_counter()
        try:
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
        except (KeyboardInterrupt, bridge.Interrupted):
            raise
        except Exception as exc:
            raise ExecutionError(nid, node["class_type"], exc) from exc
        if isinstance(out, dict):
            if out.get("ui"):
                ui_out[nid] = out["ui"]
            out = out.get("result", ())
        results[nid] = tuple(out or ())
        visiting.discard(nid)
        if log:
            log(f"[{nid}] done in {time.perf_counter() - start:.2f}s")
        return results[nid]

    previous = bridge.Progress.listener
    bridge.Progress.listener = listener
    try:
        for nid in _output_nodes(clean, classes):
            execute(nid)
    finally:
        bridge.Progress.listener = previous
        bridge.set_device(None)
    return ui_out
