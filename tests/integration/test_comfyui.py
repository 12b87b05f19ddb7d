"""Opt-in: the pack inside a real ComfyUI server (started here on 127.0.0.1, CPU).

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfyui-venv/bin/python \\
        pytest -m comfyui tests/integration

The server gets a throw-away base directory: ``custom_nodes/comfyui-echoflow`` -> this checkout, the tiny
fixture checkpoints in ``models/echoflow/`` and (to exercise ``extra_model_paths.yaml``) the ReID model in a
second root named by ``--extra-model-paths-config``. The ComfyUI environment needs this pack's requirements
(``pip install -r requirements.txt``) next to ComfyUI's own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import headless

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "echoflow-reference"
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
TINY = ["*.steps=2", "EchoFlowLoadVAE.vae_name=vae/tiny", "EchoFlowLoadImageFlow.model_name=lifm/tiny",
        "EchoFlowLoadVideoFlow.model_name=lvfm/tiny", "EchoFlowLoadPrivacyGate.reid_name=reid/tiny",
        "EchoFlowLoadEFRegressor.model_name=ef/tiny", "EchoFlowLoadLVSegmentation.model_name=seg/tiny"]


def _skip_reason() -> str | None:
    if not COMFYUI_PATH or not COMFYUI_PYTHON:
        return "set COMFYUI_PATH (a ComfyUI checkout) and COMFYUI_PYTHON (its environment's python) to run these"
    if not (Path(COMFYUI_PATH) / "main.py").is_file():
        return f"COMFYUI_PATH={COMFYUI_PATH} has no main.py"
    if not os.access(COMFYUI_PYTHON, os.X_OK):
        return f"COMFYUI_PYTHON={COMFYUI_PYTHON} is not an executable"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    try:
        return json.loads(body)
    except ValueError:
        return body


def _tiny(prompt: dict, *more: str) -> dict:
    classes = {v["class_type"] for v in prompt.values()}
    sets = [s for s in TINY if s.startswith("*") or s.split(".")[0] in classes]
    return headless.apply_overrides(prompt, [*sets, *more])


class Server:
    def __init__(self, base: Path, port: int, proc: subprocess.Popen, log: Path):
        self.base, self.port, self.proc, self.log = base, port, proc, log
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory, reid_tiny_dir):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-echoflow").symlink_to(ROOT, target_is_directory=True)
    models = base / "models" / "echoflow"
    for kind in ("vae", "lifm", "lvfm"):
        shutil.copytree(FIXTURES / kind / "tiny", models / kind / "tiny")
    (models / "assets").mkdir()
    for asset in ("scaling.pt", "anatomies_tiny.pt"):
        shutil.copy(FIXTURES / "assets" / asset, models / "assets" / asset)
    from echoflow_models import save_model
    from echoflow_models.efnet import EFRegressor, EFRegressorConfig

    save_model(EFRegressor(EFRegressorConfig(frames=8, size=32, channels=[8, 8, 8, 8], norm_groups=4, head_hidden=8)),
               models / "ef" / "tiny")
    from echoflow_models.lvseg import LVSegConfig, LVSegNet

    save_model(LVSegNet(LVSegConfig(channels=[8, 8])), models / "seg" / "tiny")
    (models / "gates.json").write_text(json.dumps({v: {"reid": "tiny", "banks": ["anatomies_tiny.pt"],
                                                       "latent_shape": [4, 28, 28]} for v in ("A4C", "PSAX", "PLAX")}))
    extra = base / "extra_root"
    shutil.copytree(reid_tiny_dir, extra / "echoflow" / "reid" / "tiny")
    (base / "extra_model_paths.yaml").write_text(f"echoflow_tests:\n  base_path: {extra}\n  echoflow: echoflow\n")
    (base / "user").mkdir()
    port = _free_port()
    log = base / "comfyui.log"
    cmd = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--base-directory", str(base), "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
           "--database-url", "sqlite:///:memory:"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=fh, stderr=subprocess.STDOUT, env=env)
    srv = Server(base, port, proc, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} during start:\n{srv.log_text()[-4000:]}")
            try:
                _get(srv.url + "/system_stats", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within 180 s:\n{srv.log_text()[-4000:]}")
                time.sleep(0.5)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def object_info(server):
    return _get(server.url + "/object_info")


def test_pack_imports_without_errors(server):
    text = server.log_text()
    assert "comfyui-echoflow" in text  # listed in the import-time table
    assert "IMPORT FAILED" not in text and "Traceback" not in text, text[-4000:]
    stats = _get(server.url + "/system_stats")
    assert stats["system"]["comfyui_version"]


def test_object_info_lists_every_node_as_defined(object_info):
    pack = headless.load_pack(ROOT)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id in object_info, f"{node_id} missing from /object_info"
        served = object_info[node_id]
        local = headless.node_info(node_id, cls, pack.NODE_DISPLAY_NAME_MAPPINGS[node_id])
        assert served["display_name"] == local["display_name"]
        assert served["category"] == local["category"] and served["description"] == local["description"]
        assert list(served["output"]) == local["output"] and served["output_node"] == local["output_node"]
        assert served["input_order"] == local["input_order"]
    vae = object_info["EchoFlowLoadVAE"]["input"]["required"]["vae_name"][0]
    reid = object_info["EchoFlowLoadPrivacyGate"]["input"]["required"]["reid_name"][0]
    assert "demo" in vae and "vae/tiny" in vae  # ComfyUI/models/echoflow
    assert "reid/tiny" in reid  # the extra_model_paths.yaml root


def test_workflow_templates_and_web_extension_are_served(server):
    templates = _get(server.url + "/workflow_templates")
    assert sorted(templates["comfyui-echoflow"]) == sorted(p.stem for p in UI_FILES)
    for path in UI_FILES:
        served = _get(f"{server.url}/api/workflow_templates/comfyui-echoflow/{path.name}")
        assert served == json.loads(path.read_text())
    extensions = _get(server.url + "/extensions")
    assert "/extensions/comfyui-echoflow/echoflow.js" in extensions
    assert b"registerExtension" in _get(server.url + "/extensions/comfyui-echoflow/echoflow.js")


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflows_convert_with_the_servers_definitions(path, object_info):
    api = json.loads((path.parent / "api" / path.name).read_text())
    converted = headless.ui_to_api(json.loads(path.read_text()), object_info)
    assert {k: v["inputs"] for k, v in converted.items()} == {k: v["inputs"] for k, v in api.items()}


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_runs_through_prompt(server, path, tmp_path):
    from echoflow_models.video_io import read_video

    prompt = _tiny(json.loads(path.read_text()))
    ui_path = path.parent.parent / path.name
    result = headless.run_on_server(prompt, server.url, output_dir=tmp_path, timeout=300, log=None,
                                    workflow=json.loads(ui_path.read_text()))
    assert result["outputs"], "ComfyUI recorded no outputs"
    if "dataset" in path.stem:
        from echoflow_models.echonet import read_filelist

        rows = read_filelist(server.base / "output" / "echoflow" / "echonet_synthetic")
        assert rows and all(r.number_of_frames == 8 for r in rows)
        return
    assert result["files"] and all(f.endswith(".mp4") for f in result["files"])
    frames, _fps = read_video(result["files"][0])
    assert frames.shape[0] == 8
    saved = server.base / "output" / Path(result["files"][0]).relative_to(tmp_path)
    assert saved.is_file()
    meta = json.loads(saved.with_suffix(".json").read_text())
    assert meta["workflow"]["version"] == 0.4 and meta["prompt"]  # ComfyUI's hidden PROMPT/EXTRA_PNGINFO


def test_video_output_feeds_core_save_video(server, object_info):
    if "SaveVideo" not in object_info:
        pytest.skip("this ComfyUI has no core SaveVideo node")
    prompt = _tiny(json.loads((ROOT / "workflows" / "api" / "echoflow_full_pipeline.json").read_text()),
                   "EchoFlowSaveVideo.filename_prefix=\"core_in/x\"")
    save = next(k for k, v in prompt.items() if v["class_type"] == "EchoFlowSaveVideo")
    prompt["100"] = {"class_type": "SaveVideo", "inputs": {"video": [save, 0], "filename_prefix": "core_out/echo",
                                                           "format": "mp4", "codec": "auto"}}
    result = headless.run_on_server(prompt, server.url, output_dir=None, log=None)
    assert "100" in result["outputs"]
    assert list((server.base / "output" / "core_out").glob("echo*.mp4"))


def test_models_are_managed_by_comfyui(server):
    text = server.log_text()
    assert "Requested to load EchoFlowLIFM" in text and "Requested to load EchoFlowVAE" in text


def test_invalid_prompt_is_refused_with_node_errors(server):
    prompt = _tiny(json.loads((ROOT / "workflows" / "api" / "echoflow_full_pipeline.json").read_text()),
                   "EchoFlowSampleImage.view=\"XYZ\"")
    with pytest.raises(headless.WorkflowError, match="(?s)refused.*node 5"):
        headless.run_on_server(prompt, server.url, output_dir=None, log=None)


def test_privacy_gate_failure_is_an_execution_error(server):
    prompt = _tiny(json.loads((ROOT / "workflows" / "api" / "echoflow_full_pipeline.json").read_text()),
                   "EchoFlowLoadPrivacyGate.tau=0.5", "EchoFlowLoadPrivacyGate.similarity=\"cosine\"",
                   "EchoFlowSaveVideo.filename_prefix=\"gate_fail/x\"")
    with pytest.raises(headless.WorkflowError, match="EchoFlowPrivacyGate.*no latent passed"):
        headless.run_on_server(prompt, server.url, output_dir=None, log=None)
    assert not (server.base / "output" / "gate_fail").exists()


def test_interrupt_stops_a_run_within_a_step(server):
    prompt = _tiny(json.loads((ROOT / "workflows" / "api" / "echoflow_full_pipeline.json").read_text()),
                   "EchoFlowSampleImage.steps=1000", "EchoFlowSampleImage.batch_size=16",
                   "EchoFlowSaveVideo.filename_prefix=\"interrupt/x\"")
    client = "4f1c6a0e-0000-4000-8000-00000000abcd"
    ws = headless.MiniWebSocket(f"ws://127.0.0.1:{server.port}/ws?clientId={client}")
    try:
        req = urllib.request.Request(server.url + "/prompt", data=json.dumps({"prompt": prompt, "client_id": client})
                                     .encode(), headers={"Content-Type": "application/json"})
        prompt_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["prompt_id"]
        progress, sent_at, ended = [], None, None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            frame = ws.recv()
            if frame is None or frame[0] != 1:
                continue
            msg = json.loads(frame[1])
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if msg["type"] == "progress" and data.get("node") == "5":
                progress.append((time.monotonic(), data["value"], data["max"]))
                if sent_at is None and data["value"] >= 3 * 16:
                    sent_at = time.monotonic()
                    urllib.request.urlopen(urllib.request.Request(server.url + "/interrupt", data=b"{}",
                                                                  method="POST"), timeout=30)
            elif msg["type"] in ("execution_interrupted", "execution_success", "execution_error"):
                ended = (time.monotonic(), msg["type"], data)
                break
    finally:
        ws.close()
    assert sent_at is not None, "no progress was reported for the sampler"
    assert ended and ended[1] == "execution_interrupted", ended
    assert ended[2]["node_type"] == "EchoFlowSampleImage"
    steps = [p for p in progress if p[0] <= sent_at]
    per_step = (steps[-1][0] - steps[0][0]) / max(1, len(steps) - 1) if len(steps) > 1 else 0.5
    assert ended[0] - sent_at < max(2.0, 3 * per_step), "the run went on for more than a step after the interrupt"
    assert progress[-1][1] < progress[-1][2]
    assert not (server.base / "output" / "interrupt").exists()


# ------------------------------------------------------------------ the real frontend (headless Chromium)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _DevTools:
    """A minimal Chrome DevTools Protocol client over headless's websocket."""

    def __init__(self, port: int):
        deadline = time.monotonic() + 60
        while True:
            try:
                pages = _get(f"http://127.0.0.1:{port}/json/list", timeout=2)
                page = next(p for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.ws = headless.MiniWebSocket(page["webSocketDebuggerUrl"], timeout=1.0)
        self.next_id = 0
        self.exceptions: list[str] = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send_text(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            frame = self.ws.recv()
            if frame is None:
                continue
            msg = json.loads(frame[1])
            if msg.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(json.dumps(msg["params"])[:2000])
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]
        raise TimeoutError(method)

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")


@pytest.fixture(scope="module")
def frontend(server, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's chromium to check the workflows in the real frontend")
    port = _free_port()
    profile = tmp_path_factory.mktemp("chromium")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--window-size=1400,900", server.url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tools = _DevTools(port)
        tools.call("Runtime.enable")
        deadline = time.monotonic() + 120
        while not tools.eval("typeof window.app !== 'undefined' && !!window.app.graph && typeof LiteGraph !== "
                             "'undefined' && !!LiteGraph.registered_node_types['EchoFlowSaveVideo']"):
            if time.monotonic() > deadline:
                pytest.fail("the ComfyUI frontend did not finish loading in Chromium")
            time.sleep(0.5)
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_frontend_loads_the_extension(frontend):
    names = frontend.eval("(app.extensions ?? []).map(e => e.name)")
    assert "EchoFlow.NodeInfo" in names


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_frontend_opens_each_workflow_with_no_missing_nodes(frontend, path):
    wf = json.loads(path.read_text())
    before = len(frontend.exceptions)
    res = frontend.eval(f"""(async () => {{
      await app.loadGraphData({json.dumps(wf)}, true, true, {json.dumps(path.stem)});
      const nodes = app.graph._nodes ?? app.graph.nodes;
      const missing = nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
      const widgets = Object.fromEntries(nodes.map(n => [String(n.id), (n.widgets ?? []).map(w => w.value)]));
      const prompt = await app.graphToPrompt();
      return {{missing, widgets, output: prompt.output}};
    }})()""")
    assert res["missing"] == []
    for node in wf["nodes"]:
        assert res["widgets"][str(node["id"])] == node["widgets_values"], f"node {node['id']} ({node['type']})"
    api = json.loads((path.parent / "api" / path.name).read_text())
    assert {k: v["inputs"] for k, v in res["output"].items()} == {k: v["inputs"] for k, v in api.items()}
    assert {k: v["class_type"] for k, v in res["output"].items()} == {k: v["class_type"] for k, v in api.items()}
    ours = [e for e in frontend.exceptions[before:] if "echoflow" in e.lower()]
    assert not ours, ours
