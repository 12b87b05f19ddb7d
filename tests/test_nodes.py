"""The ComfyUI node pack without ComfyUI: node schemas, every node's behaviour on tiny checkpoints, clear
errors for bad inputs, and the bridge's ComfyUI path against stand-in ComfyUI modules."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import headless

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ("A4C", "PSAX", "PLAX")


@pytest.fixture
def env(tiny_root, tmp_path, monkeypatch, bridge):
    """Model roots = the tiny release-layout weights; outputs in a temp folder."""
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", str(tiny_root))
    monkeypatch.delenv("ECHOFLOW_WEIGHTS", raising=False)
    bridge.set_output_directory(tmp_path / "out")
    bridge.clear_interrupt()
    yield tmp_path / "out"
    bridge.set_output_directory(None)


@pytest.fixture
def models(env, M):
    (vae,) = M["EchoFlowLoadVAE"]().load("vae/tiny", "auto", "auto")
    (lifm,) = M["EchoFlowLoadImageFlow"]().load("lifm/tiny", "auto")
    (lvfm,) = M["EchoFlowLoadVideoFlow"]().load("lvfm/tiny", "fp32")
    gate = load_gate(M, "reid/tiny", "A4C", "auto", 0.9997, "pearson")
    return types.SimpleNamespace(vae=vae, lifm=lifm, lvfm=lvfm, gate=gate)


def load_gate(M, *args, **kwargs):
    """The gate a Load Privacy Gate node returns (the node also shows its tau on the canvas)."""
    out = M["EchoFlowLoadPrivacyGate"]().load(*args, **kwargs)
    assert "tau" in out["ui"]["text"][0]
    return out["result"][0]


def sample(M, models, **kw):
    args = dict(view="A4C", steps=2, solver="euler", seed=3, batch_size=2)
    args.update(kw)
    return M["EchoFlowSampleImage"]().sample(models.lifm, **args)


# ------------------------------------------------------------------------------------------ schemas
def test_pack_imports_under_private_name_without_comfyui(pack):
    assert "nodes" not in sys.modules or not getattr(sys.modules["nodes"], "__file__", "").startswith(str(ROOT))
    assert pack.WEB_DIRECTORY == "./web"
    assert (ROOT / "web" / "echoflow.js").is_file()
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)


def test_required_nodes_present(M, pack):
    shown = set(pack.NODE_DISPLAY_NAME_MAPPINGS.values())
    for name in ["EchoFlow Load VAE", "EchoFlow Load Image Flow", "EchoFlow Load Video Flow",
                 "EchoFlow Load Privacy Gate", "EchoFlow Sample Image", "EchoFlow LV Mask", "EchoFlow Privacy Gate",
                 "EchoFlow Animate", "EchoFlow VAE Decode", "EchoFlow VAE Encode", "EchoFlow Save Video",
                 "EchoFlow Save EchoNet Dataset", "EchoFlow Estimate EF"]:
        assert name in shown


def test_every_node_has_ids_categories_descriptions_and_tooltips(M):
    for node_id, cls in M.items():
        assert node_id.startswith("EchoFlow")
        assert cls.CATEGORY == "EchoFlow" or cls.CATEGORY.startswith("EchoFlow/"), node_id
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40, node_id
        assert callable(getattr(cls, cls.FUNCTION)), node_id
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES), node_id
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
                kind, opts = entry
                if isinstance(kind, list):
                    assert kind, f"{node_id}.{name}: empty combo"
                    assert opts.get("default", kind[0]) in kind
                if kind in ("INT", "FLOAT") and not opts.get("forceInput"):
                    assert opts["min"] <= opts["default"] <= opts["max"], f"{node_id}.{name}"
        info = headless.node_info(node_id, cls)
        json.dumps(info)  # /object_info must be JSON


def test_seed_inputs_have_control_after_generate(M):
    for node_id in ("EchoFlowSampleImage", "EchoFlowAnimate"):
        seed = M[node_id].INPUT_TYPES()["required"]["seed"]
        assert seed[0] == "INT" and seed[1]["control_after_generate"] is True


def test_only_the_bridge_imports_comfyui():
    offenders = []
    for path in sorted((ROOT / "nodes").rglob("*.py")) + [ROOT / "__init__.py"]:
        if path == ROOT / "nodes" / "bridge" / "_host.py":  # the one import of ComfyUI's modules
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                if n.split(".")[0] in ("comfy", "folder_paths", "comfy_api", "server", "nodes", "execution"):
                    offenders.append(f"{path.name}: import {n}")
    assert not offenders, offenders


def test_loaders_list_demo_and_user_models(env, M, tiny_root):
    vae_names = M["EchoFlowLoadVAE"].INPUT_TYPES()["required"]["vae_name"][0]
    assert vae_names[0] == "demo" and "vae/tiny" in vae_names
    assert "lifm/tiny" in M["EchoFlowLoadImageFlow"].INPUT_TYPES()["required"]["model_name"][0]
    assert "lvfm/tiny" in M["EchoFlowLoadVideoFlow"].INPUT_TYPES()["required"]["model_name"][0]
    gate_spec = M["EchoFlowLoadPrivacyGate"].INPUT_TYPES()
    assert "reid/tiny" in gate_spec["required"]["reid_name"][0]
    assert "assets/anatomies_tiny.pt" in gate_spec["required"]["bank"][0]
    assert gate_spec["optional"]["extra_bank"][0][0] == "none"
    assert "assets/scaling.pt" in M["EchoFlowLoadVAE"].INPUT_TYPES()["required"]["scaling"][0]
    for node_id in ("EchoFlowLoadVAE", "EchoFlowLoadImageFlow", "EchoFlowLoadVideoFlow", "EchoFlowLoadEFRegressor"):
        spec = M[node_id].INPUT_TYPES()["required"]
        assert spec["precision"][0] == ["auto", "fp32", "fp16", "bf16"]


def test_models_are_listed_by_config_class_not_folder(env, M, tiny_root, tmp_path, monkeypatch):
    import shutil

    other = tmp_path / "elsewhere"
    shutil.copytree(tiny_root / "lifm" / "tiny", other / "my_models" / "flow_v2")
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", f"{tiny_root}{__import__('os').pathsep}{other}")
    names = M["EchoFlowLoadImageFlow"].INPUT_TYPES()["required"]["model_name"][0]
    assert "my_models/flow_v2" in names
    assert "my_models/flow_v2" not in M["EchoFlowLoadVAE"].INPUT_TYPES()["required"]["vae_name"][0]


def test_missing_models_give_clear_errors(env, M, bridge, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"models/echoflow/vae/<name>"):
        M["EchoFlowLoadVAE"]().load("vae/nope", "auto", "auto")
    monkeypatch.setattr(bridge.folders, "demo_root", lambda: None)
    with pytest.raises(FileNotFoundError, match="demo weights are not installed"):
        M["EchoFlowLoadImageFlow"]().load("demo", "auto")
    with pytest.raises(FileNotFoundError, match="assets/"):
        M["EchoFlowLoadVAE"]().load("vae/tiny", "assets/missing_scaling.pt", "auto")


def test_loaders_reload_when_weights_change(env, M, tiny_root):
    import os

    first = M["EchoFlowLoadImageFlow"].IS_CHANGED(model_name="lifm/tiny", precision="auto")
    assert first == M["EchoFlowLoadImageFlow"].IS_CHANGED(model_name="lifm/tiny", precision="fp32")
    weights = tiny_root / "lifm" / "tiny" / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert M["EchoFlowLoadImageFlow"].IS_CHANGED(model_name="lifm/tiny", precision="auto") != first
    assert M["EchoFlowLoadVAE"].IS_CHANGED(vae_name="vae/none") == "missing:vae/none"


def test_precision_choices(env, M, bridge):
    (lifm,) = M["EchoFlowLoadImageFlow"]().load("lifm/tiny", "bf16")
    assert lifm.dtype == torch.bfloat16 and next(lifm.module.parameters()).dtype == torch.bfloat16
    (vae,) = M["EchoFlowLoadVAE"]().load("vae/tiny", "auto", "fp16")  # force_upcast keeps the VAE in fp32
    assert vae.dtype == torch.float32
    assert bridge.pick_dtype("auto", "flow") == torch.float32  # CPU
    with pytest.raises(ValueError):
        bridge.pick_dtype("int8")


# ------------------------------------------------------------------------------------- generation
def test_sample_image_batch_equals_single_runs(M, models):
    out = sample(M, models, batch_size=3, seed=10)["result"][0]
    z = out["samples"]
    assert z.shape == (3, 4, 28, 28) and z.dtype == torch.float32
    assert out["view"] == "A4C" and out["seeds"] == [10, 11, 12]
    single = sample(M, models, batch_size=1, seed=11)["result"][0]["samples"]
    torch.testing.assert_close(z[1:2], single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z[0], z[1])


def test_sample_image_with_mask_and_preview(M, models):
    (mask,) = M["EchoFlowLVMask"]().make(0.5, 0.5, 0.5, 0.3, 10.0, 112)["result"]
    assert mask.shape == (1, 112, 112) and set(mask.unique().tolist()) == {0.0, 1.0}
    r = sample(M, models, mask=mask, vae=models.vae)
    assert len(r["ui"]["images"]) == 2 and r["ui"]["images"][0]["type"] == "temp"
    unmasked = sample(M, models)["result"][0]["samples"]
    assert not torch.allclose(r["result"][0]["samples"], unmasked)
    with pytest.raises(ValueError, match="masks for a batch"):
        sample(M, models, batch_size=2, mask=mask.repeat(3, 1, 1))


def test_lv_mask_geometry_and_errors(M):
    from echoflow_models.masks import lv_mask

    upright = lv_mask(112, length=0.6, width=0.3)
    rows = upright.sum(1).nonzero()
    assert 0.55 < (rows.max() - rows.min() + 1).item() / 112 < 0.65
    tilted = lv_mask(112, length=0.6, width=0.3, angle=45)
    assert abs(tilted.sum().item() - upright.sum().item()) / upright.sum().item() < 0.05
    with pytest.raises(ValueError, match="empty"):
        M["EchoFlowLVMask"]().make(1.0, 1.0, 0.05, 0.05, 0.0, 8)  # smaller than a pixel, in the corner
    with pytest.raises(ValueError):
        lv_mask(112, base_taper=1.5)


def test_privacy_gate_passes_and_reports(M, models):
    lat = sample(M, models)["result"][0]
    r = M["EchoFlowPrivacyGate"]().check(models.gate, lat)
    passed, text, js, count = r["result"]
    report = json.loads(js)
    assert count == passed["samples"].shape[0] == report["passed"]
    assert report["tau"] == pytest.approx(0.9997) and report["similarity"] == "pearson"
    assert len(report["items"]) == 2 and {"max_similarity", "nearest_index", "passed"} <= set(report["items"][0])
    assert "PASS" in text and r["ui"]["echoflow_gate"][0]["items"] == report["items"]
    assert passed["privacy"]["passed"] == count


def test_privacy_gate_fails_closed(M, models, env):
    from echoflow_comfy_pack.nodes.privacy import EchoFlowPrivacyGateError  # noqa: F401  (import path check)

    lat = sample(M, models)["result"][0]
    strict = load_gate(M, "reid/tiny", "A4C", "auto", 0.5, "cosine")
    with pytest.raises(RuntimeError, match="no latent passed"):  # sigmoid embeddings: cosine >= 0.5
        M["EchoFlowPrivacyGate"]().check(strict, lat)
    psax = dict(lat, view="PSAX")
    with pytest.raises(ValueError, match="guards A4C but the latents are PSAX"):
        M["EchoFlowPrivacyGate"]().check(models.gate, psax)
    with pytest.raises(ValueError, match=r"judges latent images \[B, 4, 28, 28\].*\[2, 3, 28, 28\]"):
        M["EchoFlowPrivacyGate"]().check(models.gate, dict(lat, samples=torch.zeros(2, 3, 28, 28)))
    with pytest.raises(ValueError, match="between Sample Image and Animate"):
        M["EchoFlowPrivacyGate"]().check(models.gate, dict(lat, samples=torch.zeros(1, 4, 2, 28, 28)))
    with pytest.raises(ValueError, match="Load Privacy Gate"):
        M["EchoFlowPrivacyGate"]().check(models.lifm, lat)


def test_privacy_gate_partial_pass_keeps_order(M, models, monkeypatch):
    from echoflow_models.reid import GateItem, GateReport, PrivacyGate

    lat = sample(M, models, batch_size=3)["result"][0]

    def fake_check(self, latents):
        items = [GateItem(0.1, 0, True), GateItem(0.9999, 1, False), GateItem(0.2, 2, True)]
        return GateReport(items, self.tau, self.similarity, int(self.bank.shape[0]), self.view)

    monkeypatch.setattr(PrivacyGate, "check", fake_check)
    passed, _, js, count = M["EchoFlowPrivacyGate"]().check(models.gate, lat)["result"]
    assert count == 2
    torch.testing.assert_close(passed["samples"], lat["samples"][[0, 2]])
    assert passed["seeds"] == [lat["seeds"][0], lat["seeds"][2]]


def test_gate_loader_checks_bank_against_reid(M, env, tiny_root, tmp_path, monkeypatch):
    bad = tmp_path / "root2"
    (bad / "assets").mkdir(parents=True)
    torch.save(torch.rand(5, 7), bad / "assets" / "anatomies_bad.pt")
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", f"{tiny_root}{__import__('os').pathsep}{bad}")
    with pytest.raises(ValueError, match="7-d but the ReID model .* embeds to 128-d"):
        load_gate(M, "reid/tiny", "A4C", "assets/anatomies_bad.pt", 0.9997, "pearson")
    with pytest.raises(ValueError, match="twice"):
        load_gate(M, "reid/tiny", "A4C", "assets/anatomies_tiny.pt", 0.9997, "pearson",
                                             extra_bank="assets/anatomies_tiny.pt")
    torch.save(torch.rand(5, 128), bad / "assets" / "anatomies_more.pt")
    two = load_gate(M, "reid/tiny", "PSAX", "assets/anatomies_tiny.pt", 0.9997,
                                                  "cosine", extra_bank="assets/anatomies_more.pt")
    assert two.extra["bank"].shape == (21, 128) and two.extra["view"] == "PSAX"


def test_animate_decode_encode_chain(M, models):
    lat = sample(M, models, batch_size=2)["result"][0]
    r = M["EchoFlowAnimate"]().animate(models.lvfm, lat, 35.0, 2, "heun", 1.0, 5)
    video, ef = r["result"]
    z = video["samples"]
    assert z.shape == (2, 4, 8, 28, 28) and ef == 35.0
    assert video["ef"] == [35.0, 35.0] and video["view"] == "A4C" and video["ef_category"] == "reduced"
    assert r["ui"]["ef_category"] == ["reduced"]
    single = M["EchoFlowAnimate"]().animate(models.lvfm, dict(lat, samples=lat["samples"][1:]), 35.0, 2, "heun",
                                            1.0, 6)["result"][0]["samples"]
    torch.testing.assert_close(z[1:], single, atol=1e-5, rtol=1e-5)
    images, info = M["EchoFlowVAEDecode"]().decode(models.vae, video, 3)
    assert images.shape == (16, 112, 112, 3) and info["frames_per_video"] == 8 and info["videos"] == 2
    assert [item["ef"] for item in info["items"]] == [35.0, 35.0] and info["items"][1]["video_seed"] == 6
    assert info["items"][0]["seed"] == lat["seeds"][0] and info["run"]["view"] == "A4C"
    assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0
    stills, one = M["EchoFlowVAEDecode"]().decode(models.vae, lat, 16)
    assert stills.shape == (2, 112, 112, 3) and one["frames_per_video"] == 1
    (enc,) = M["EchoFlowVAEEncode"]().encode(models.vae, stills, "A4C", 112)
    assert enc["samples"].shape == (2, 4, 28, 28) and enc["view"] == "A4C"
    (resized,) = M["EchoFlowVAEEncode"]().encode(models.vae, torch.rand(1, 64, 80, 4), "unknown", 112)
    assert resized["samples"].shape == (1, 4, 28, 28)


def test_animate_and_decode_input_errors(M, models):
    lat = sample(M, models, batch_size=1)["result"][0]
    video = M["EchoFlowAnimate"]().animate(models.lvfm, lat, 55.0, 1, "euler", 1.0, 0)["result"][0]
    with pytest.raises(ValueError, match="already a video"):
        M["EchoFlowAnimate"]().animate(models.lvfm, video, 55.0, 1, "euler", 1.0, 0)
    with pytest.raises(ValueError, match="Load Video Flow"):
        M["EchoFlowAnimate"]().animate(models.lifm, lat, 55.0, 1, "euler", 1.0, 0)
    with pytest.raises(ValueError, match="EchoFlow latent"):
        M["EchoFlowVAEDecode"]().decode(models.vae, {"samples": None}, 4)
    with pytest.raises(ValueError, match="channels"):
        M["EchoFlowVAEDecode"]().decode(models.vae, {"samples": torch.zeros(1, 3, 28, 28)}, 4)
    with pytest.raises(ValueError, match="Load VAE"):
        M["EchoFlowVAEDecode"]().decode(models.lifm, lat, 4)
    with pytest.raises(ValueError, match="IMAGE"):
        M["EchoFlowVAEEncode"]().encode(models.vae, torch.zeros(2, 3, 112, 112), "A4C", 112)


def test_decode_retries_smaller_chunks_after_oom(M, models, monkeypatch):
    from echoflow_models.pipeline import EchoFlowPipeline

    lat = sample(M, models, batch_size=1)["result"][0]
    video = M["EchoFlowAnimate"]().animate(models.lvfm, lat, 55.0, 1, "euler", 1.0, 0)["result"][0]
    reference, _ = M["EchoFlowVAEDecode"]().decode(models.vae, video, 8)
    original = EchoFlowPipeline.decode
    seen = []

    def flaky(self, latents, chunk_size=16, callback=None):
        seen.append(latents.shape[0])
        if latents.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, latents, chunk_size, callback)

    monkeypatch.setattr(EchoFlowPipeline, "decode", flaky)
    images, _ = M["EchoFlowVAEDecode"]().decode(models.vae, video, 8)
    assert seen[:3] == [8, 4, 2] and max(seen[3:]) == 2
    torch.testing.assert_close(images, reference)

    def always(self, latents, chunk_size=16, callback=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(EchoFlowPipeline, "decode", always)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        M["EchoFlowVAEDecode"]().decode(models.vae, video, 8)


def test_interrupt_stops_sampling_within_a_step(M, models, bridge):
    calls = []
    bridge.Progress.listener = lambda label, done, total: calls.append(done)
    try:
        bridge.request_interrupt()
        with pytest.raises(bridge.Interrupted):
            sample(M, models, steps=50, batch_size=1)
        assert calls == []  # stopped at the first step's callback
        bridge.clear_interrupt()
        sample(M, models, steps=3, batch_size=2)
        assert calls[-1] == 6  # 3 steps x 2 items
    finally:
        bridge.Progress.listener = None
        bridge.clear_interrupt()


# ---------------------------------------------------------------------------------------- outputs
def _video_images(M, models, n=2, seed=3):
    """Sample -> privacy gate -> animate -> decode: frames and their video_info."""
    lat = sample(M, models, batch_size=n, seed=seed)["result"][0]
    passed = M["EchoFlowPrivacyGate"]().check(models.gate, lat)["result"][0]
    assert passed["samples"].shape[0] == n
    video = M["EchoFlowAnimate"]().animate(models.lvfm, passed, 55.0, 1, "euler", 1.0, 0)["result"][0]
    return M["EchoFlowVAEDecode"]().decode(models.vae, video, 16)


def test_save_video_writes_mp4_avi_preview_and_metadata(M, models, env):
    from echoflow_models.video_io import read_metadata, read_video

    images, info = _video_images(M, models)
    node = M["EchoFlowSaveVideo"]()
    r = node.save(images, "echoflow/clip", 16.0, "mp4+avi", info, prompt={"1": {"class_type": "X"}},
                  extra_pnginfo={"workflow": {"nodes": []}})
    video, paths = r["result"]
    files = json.loads(paths)
    assert files == ["echoflow/clip_00001_.mp4", "echoflow/clip_00001_.avi", "echoflow/clip_00002_.mp4",
                     "echoflow/clip_00002_.avi"]
    ui = r["ui"]
    assert ui["animated"] == [True, True]  # one preview per video of the batch
    assert ui["images"][0] == {"filename": "clip_00001_.mp4", "subfolder": "echoflow", "type": "output"}
    assert ui["images"][1]["filename"] == "clip_00002_.mp4"
    frames, fps = read_video(env / files[0])
    assert frames.shape == (8, 112, 112, 3) and fps == pytest.approx(16.0)
    meta = read_metadata(env / files[0])
    assert meta["ef"] == 55.0 and meta["privacy"]["passed"] == 2 and meta["workflow"] == {"nodes": []}
    assert meta["prompt"]["1"]["class_type"] == "X" and meta["frames"] == 8
    assert meta["seed"] == info["items"][0]["seed"] and meta["max_similarity"] < meta["privacy"]["tau"]
    assert read_metadata(env / files[2])["seed"] == info["items"][1]["seed"]  # each video its own entry
    assert json.loads((env / "echoflow" / "clip_00001_.json").read_text())["ef_category"] == "normal"
    assert [str(getattr(v, "path", "")).rsplit("/", 1)[-1] for v in video] == ["clip_00001_.mp4", "clip_00002_.mp4"]
    assert M["EchoFlowSaveVideo"].OUTPUT_IS_LIST == (True, False)
    # never overwrites: a second save continues the counter
    again = json.loads(node.save(images, "echoflow/clip", 16.0, "mp4")["result"][1])
    assert again == ["echoflow/clip_00003_.mp4"]  # no video_info: the batch is one video
    assert read_video(env / again[0])[0].shape[0] == 16
    avi_only = node.save(images[:8], "echoflow/avi", 16.0, "avi")["ui"]
    assert avi_only["images"][0]["filename"].endswith(".webp") and avi_only["images"][0]["type"] == "temp"
    # preview only: shown from the temp folder, nothing kept in the output folder
    before = sorted(p.relative_to(env).as_posix() for p in env.rglob("*") if p.is_file())
    shown = node.save(images, "echoflow/look", 16.0, "preview only", info)
    assert json.loads(shown["result"][1]) == [] and len(shown["result"][0]) == 2
    assert [i["type"] for i in shown["ui"]["images"]] == ["temp", "temp"]
    after = sorted(p.relative_to(env).as_posix() for p in env.rglob("*") if p.is_file() and ".echoflow_temp" not in p.parts)
    assert after == [b for b in before if ".echoflow_temp" not in b]


def test_save_video_input_errors(M, env):
    node = M["EchoFlowSaveVideo"]()
    frames = torch.rand(10, 112, 112, 3)
    info = {"frames_per_video": 4, "videos": 2, "run": {}, "items": [{}, {}]}
    with pytest.raises(ValueError, match="do not split into videos of 4"):
        node.save(frames, "x", 8.0, "mp4", info)
    with pytest.raises(ValueError, match="video_info describes 2"):
        node.save(frames, "x", 8.0, "mp4", dict(info, frames_per_video=2))
    with pytest.raises(ValueError, match="video_info: connect"):
        node.save(frames, "x", 8.0, "mp4", 5)
    with pytest.raises(ValueError, match="outside the output folder"):
        node.save(frames, "../escape", 8.0, "mp4")
    with pytest.raises(ValueError, match="format"):
        node.save(frames, "x", 8.0, "gif")


def test_save_echonet_dataset_is_resume_safe(M, models, env):
    from echoflow_models.echonet import read_filelist

    images, info = _video_images(M, models)
    node = M["EchoFlowSaveEchoNetDataset"]()
    info["items"][0]["ef"], info["items"][1]["max_similarity"] = 42.5, 0.25
    shown, total = node.save(images, 60.0, "echoflow/ds", "TRAIN", 32.0, "synth", info)["result"]
    assert total == 2 and shown == "echoflow/ds"  # relative to the output folder: no absolute path
    root = env / shown
    rows = read_filelist(root)
    assert [r.file_name for r in rows] == ["synth_00001", "synth_00002"]
    assert rows[0].ef == 42.5 and rows[0].number_of_frames == 8 and rows[0].split == "TRAIN"
    assert rows[1].extra["MaxSimilarity"] == "0.250000" and rows[0].extra["View"] == "A4C"
    before = (Path(root) / "Videos" / "synth_00001.avi").read_bytes()
    # re-queued: the same generations are not written again
    _, total = node.save(images, 60.0, "echoflow/ds", "TRAIN", 32.0, "synth", info)["result"]
    assert total == 2
    # a new generation (another seed) gets the next free name; finished files are untouched
    images2, info2 = _video_images(M, models, seed=11)
    _, total = node.save(images2[:8], 60.0, "echoflow/ds", "VAL", 32.0, "synth",
                         dict(info2, videos=1, items=info2["items"][:1]))["result"]
    assert total == 3
    rows = read_filelist(root)
    assert rows[2].file_name == "synth_00003" and rows[2].split == "VAL" and rows[2].ef == 55.0
    assert rows[2].extra["Seed"] == str(info2["items"][0]["seed"]) and rows[2].extra["Generation"]
    assert (Path(root) / "Videos" / "synth_00001.avi").read_bytes() == before
    # frames without a privacy verdict never enter a synthetic dataset
    with pytest.raises(ValueError, match="only videos that passed the privacy gate"):
        node.save(images[:8].flip(2), 60.0, "echoflow/ds", "VAL", 32.0, "synth")
    for bad in ("a/b", "../evil", ".hidden", "a b"):
        with pytest.raises(ValueError, match="name_prefix"):
            node.save(images[:8], 60.0, "echoflow/ds", "VAL", 32.0, bad, info)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        node.save(images, 60.0, "echoflow/ds", "VAL", float("nan"), "synth", info)
    assert len(read_filelist(root)) == 3
    with pytest.raises(ValueError, match="outside"):
        node.save(images, 60.0, "/etc", "VAL", 32.0, "x", info)


class TinyEF(torch.nn.Module):
    """The EF regressor contract: frames [B,3,T,H,W] in [-1,1] -> EF percent [B]."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, frames):
        assert frames.ndim == 5 and frames.shape[1] == 3 and frames.min() >= -1 and frames.max() <= 1
        return 50.0 + self.scale * frames.mean(dim=(1, 2, 3, 4))


def test_estimate_ef_with_a_regressor_module(M, bridge):
    ef_model = bridge.ManagedModel(TinyEF(), torch.float32, "ef", "tiny")
    frames = torch.cat([torch.full((4, 16, 16, 3), 0.5), torch.full((4, 16, 16, 3), 1.0)])
    info = {"frames_per_video": 4, "videos": 2, "run": {}, "items": [{"ef": 55.0}, {"ef": 55.0}]}
    r = M["EchoFlowEstimateEF"]().estimate(ef_model, frames, info)
    mean, report = r["result"]
    values = r["ui"]["echoflow_ef"]
    assert values == pytest.approx([50.0, 70.0], abs=0.5)
    assert mean == pytest.approx(sum(values) / 2)
    assert f"error {abs(values[1] - 55.0):.1f}" in report and "normal" in report
    with pytest.raises(ValueError, match="Load EF Regressor"):
        M["EchoFlowEstimateEF"]().estimate(None, frames, info)


def test_ef_regressor_loads_from_a_model_root(M, env, tmp_path, monkeypatch, tiny_root):
    from echoflow_models import save_model
    from echoflow_models.efnet import EFRegressor, EFRegressorConfig

    save_model(EFRegressor(EFRegressorConfig(frames=8, size=32, channels=[8, 8, 8, 8], norm_groups=4, head_hidden=8)),
               tmp_path / "efroot" / "ef" / "small")
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", f"{tiny_root}{__import__('os').pathsep}{tmp_path / 'efroot'}")
    assert "ef/small" in M["EchoFlowLoadEFRegressor"].INPUT_TYPES()["required"]["model_name"][0]
    (ef_model,) = M["EchoFlowLoadEFRegressor"]().load("ef/small", "auto")
    assert ef_model.dtype == torch.float32
    info = {"frames_per_video": 6, "videos": 2, "run": {}, "items": [{"ef": 30.0}, {"ef": 70.0}]}
    r = M["EchoFlowEstimateEF"]().estimate(ef_model, torch.rand(12, 32, 32, 3), info)
    mean, report = r["result"]
    assert "target 30.0%" in report and "target 70.0%" in report and "echoflow_ef_target" not in r["ui"]
    assert report.count("video ") == 2 and 0 < mean < 100


def test_stack_videos(M):
    a, b = torch.zeros(4, 8, 8, 3), torch.ones(4, 8, 8, 3)
    (out,) = M["EchoFlowStackVideos"]().stack(a, b, 2, images_3=a)
    assert out.shape == (4, 8, 8 * 3 + 4, 3)
    assert out[:, :, 10:18].min() == 1.0 and out[:, :, 8:10].max() == 0.0
    with pytest.raises(ValueError, match="images_2"):
        M["EchoFlowStackVideos"]().stack(a, torch.zeros(5, 8, 8, 3), 0)


# ------------------------------------------------------------------------- the ComfyUI path of the bridge
def _fake_comfy(tmp_path):
    calls = types.SimpleNamespace(load=[], progress=[], interrupts=0, folders={}, patchers=[])
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {}

    def add_model_folder_path(name, path, is_default=False):
        paths, exts = fp.folder_names_and_paths.setdefault(name, ([], set()))
        paths.insert(0, path) if is_default else paths.append(path)

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    fp.get_output_directory = lambda: str(tmp_path / "comfy_out")
    fp.get_temp_directory = lambda: str(tmp_path / "comfy_temp")
    mm = types.ModuleType("comfy.model_management")

    def throw():
        calls.interrupts += 1
        if getattr(calls, "interrupt_after", None) is not None and calls.interrupts > calls.interrupt_after:
            raise KeyboardInterrupt("InterruptProcessingException")

    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.throw_exception_if_processing_interrupted = throw
    mm.load_models_gpu = lambda models, memory_required=0, force_full_load=False: calls.load.append(
        (len(models), memory_required, force_full_load))
    mm.soft_empty_cache = lambda force=False: None
    mm.is_oom = lambda e: isinstance(e, torch.cuda.OutOfMemoryError)
    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            model.device = offload_device  # what the real patcher does to the module it manages
            calls.patchers.append(self)

    mp.ModelPatcher = ModelPatcher
    cu = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls.progress.append((value, total))

    cu.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher, comfy.utils = mm, mp, cu
    return calls, {"comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": mp, "comfy.utils": cu,
                   "folder_paths": fp}


def test_bridge_uses_comfyui_when_present(tmp_path, monkeypatch, tiny_root, pack):
    calls, fakes = _fake_comfy(tmp_path)
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, name, mod)
    folder = ROOT / "nodes" / "bridge"
    spec = importlib.util.spec_from_file_location("echoflow_bridge_under_comfy", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    b = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "echoflow_bridge_under_comfy", b)
    spec.loader.exec_module(b)
    assert b.HAS_COMFY
    paths, exts = fakes["folder_paths"].folder_names_and_paths["echoflow"]
    assert paths[0] == str(tmp_path / "models" / "echoflow") and ".safetensors" in exts
    assert (tmp_path / "models" / "echoflow").is_dir()
    # extra_model_paths.yaml adds roots under the same name: they are listed too
    fakes["folder_paths"].add_model_folder_path("echoflow", str(tiny_root))
    assert "lifm/tiny" in b.list_models("lifm")
    assert b.output_directory() == tmp_path / "comfy_out"
    from echoflow_models import load_model

    m = b.ManagedModel(load_model(tiny_root / "lifm" / "tiny"), torch.float32, "lifm", "lifm/tiny")
    assert calls.patchers and calls.patchers[0].model is m._holder and type(m._holder).__name__ == "EchoFlowLIFM"
    assert b.load_models([m]) == torch.device("cpu") and calls.load == [(1, 0, True)]
    # a real activation estimate is passed on (ComfyUI frees or offloads other models first); ours load fully
    need = b.activation_memory(m, 4)
    b.load_models([m], memory_required=need)
    assert calls.load[-1] == (1, need, True) and need == 4 * b.activation_memory(m, 1)
    p = b.Progress(3, "x")
    cb = p.callback()
    for i in range(3):
        cb(i + 1, 3, torch.zeros(1))
    assert calls.progress == [(1, 3), (2, 3), (3, 3)] and calls.interrupts == 3
    calls.interrupt_after = 4
    cb(1, 3, torch.zeros(1))
    with pytest.raises(KeyboardInterrupt):
        cb(2, 3, torch.zeros(1))
