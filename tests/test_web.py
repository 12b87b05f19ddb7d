"""The frontend extension: its logic under node's test runner, and agreement with the Python side."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node (Node.js >= 18) is not installed; the JS tests need it")


def test_extension_files_are_where_comfyui_loads_them():
    import importlib

    pack = importlib.import_module("headless").load_pack(ROOT)
    assert (ROOT / pack.WEB_DIRECTORY / "echoflow.js").is_file()
    main = (WEB / "echoflow.js").read_text()
    assert 'from "../../scripts/app.js"' in main and "app.registerExtension(" in main
    assert 'from "./echoflow_logic.js"' in main
    # ComfyUI auto-loads every *.js under web/: the tests must not be among them
    assert not list((WEB / "tests").glob("*.js"))


@needs_node
def test_js_logic_under_node_test():
    r = subprocess.run([NODE, "--test", str(WEB / "tests")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# fail 0" in r.stdout


@needs_node
def test_js_ef_bands_match_python():
    sys.path.insert(0, str(ROOT))
    import headless

    headless.load_pack(ROOT)
    from echoflow_comfy_pack.nodes.common import ef_category

    values = [0, 10, 29.9, 30, 35, 39.99, 40, 45, 49.9, 50, 55, 69.9, 70, 70.1, 80, 100]
    script = (
        f"import('{(WEB / 'echoflow_logic.js').as_uri()}').then(m => "
        f"console.log(JSON.stringify({json.dumps(values)}.map(v => m.efCategory(v).label))))"
    )
    r = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [ef_category(v) for v in values]


@needs_node
def test_js_gate_verdict_reads_the_python_report():
    """The extension reads GateReport.to_dict() as the node sends it in ui.echoflow_gate."""
    from echoflow_models.reid import GateItem, GateReport

    report = GateReport([GateItem(0.42, 3, True), GateItem(0.99991, 5, False)], 0.9997, "pearson", 16, "A4C").to_dict()
    script = (
        f"import('{(WEB / 'echoflow_logic.js').as_uri()}').then(m => "
        f"console.log(JSON.stringify(m.gateVerdict({json.dumps(report)}))))"
    )
    r = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["ok"] is True and v["headline"].startswith("1/2 passed")
    assert "0.420000" in v["lines"][0] and "REJECT" in v["lines"][1]


def test_readouts_are_an_unserialised_widget_inside_the_node():
    """Issue 18: readouts sit in a widget inside the node (not drawn below it over the next node), kept out of
    widgets_values and the prompt, and restored from node.properties on reload."""
    main = (WEB / "echoflow.js").read_text()
    assert "node.size[1] + 4" not in main and "this.size[1] + 4" not in main  # nothing drawn under the node
    assert "serialize: false" in main and "options: { serialize: false }" in main
    assert "computeSize(" in main and "addCustomWidget(" in main
    assert '"onConfigure"' in main and '"onExecuted"' in main
    assert "READOUT_PROPERTY" in main


@needs_node
def test_js_readouts_read_what_the_nodes_send():
    """Each readout comes from the ui key its node really sends (names checked against the node sources)."""
    sources = {name: (ROOT / "nodes" / f"{mod}.py").read_text() for name, mod in
               [("gate", "privacy"), ("gate_tau", "loaders"), ("ef", "analysis"), ("ef_seg", "analysis"),
                ("lv", "analysis"), ("video", "outputs")]}
    keys = {"gate": "echoflow_gate", "gate_tau": "echoflow_gate_tau", "ef": "echoflow_ef", "ef_seg": "echoflow_ef_seg",
            "lv": "echoflow_lv", "video": "echoflow_video"}
    for kind, key in keys.items():
        assert f'"{key}"' in sources[kind], (kind, key)
    script = (
        f"import('{(WEB / 'echoflow_logic.js').as_uri()}').then(m => console.log(JSON.stringify(["
        "m.READOUT_KINDS, "
        "m.readoutFromMessage('gate_tau', {echoflow_gate_tau: [{tau: 0.979, calibrated_tau: 0.979, "
        "tau_chosen_by: 'calibrated', calibrated_source: 'gates.json', looser_than_calibrated: false}]}), "
        "m.readoutFromMessage('video', {text: ['x']})])))"
    )
    r = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds, tau, none = json.loads(r.stdout)
    assert sorted(kinds) == ["EchoFlowAnimate", "EchoFlowEstimateEF", "EchoFlowLoadPrivacyGate", "EchoFlowPrivacyGate",
                             "EchoFlowSaveEchoNetDataset", "EchoFlowSaveVideo", "EchoFlowSegmentLV"]
    # every node with a readout sends the ui key its readout reads
    M = importlib.import_module("headless").load_pack(ROOT).NODE_CLASS_MAPPINGS
    assert set(kinds) <= set(M)
    assert tau == {"lines": ["τ 0.979 (calibrated, gates.json)"], "color": "#5cb85c"}
    assert none is None
