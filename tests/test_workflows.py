"""Shipped workflows: UI files valid against the node definitions and equal to their API twins; every API
workflow runs in-process; the headless runner's errors; `echoflow generate-dataset`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import headless
from echoflow_models import dataset_maker

ROOT = Path(__file__).resolve().parent.parent
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}
LINK_ONLY = "link"

# Tiny checkpoints (tests/fixtures) in place of the bundled demo weights, and 2 solver steps.
TINY = ["*.steps=2", "EchoFlowLoadVAE.vae_name=vae/tiny", "EchoFlowLoadImageFlow.model_name=lifm/tiny",
        "EchoFlowLoadVideoFlow.model_name=lvfm/tiny", "EchoFlowLoadPrivacyGate.reid_name=reid/tiny",
        "EchoFlowLoadEFRegressor.model_name=ef/tiny", "EchoFlowLoadLVSegmentation.model_name=seg/tiny"]


def save_tiny_ef(root: Path) -> Path:
    """A small EFRegressor in the released layout (root/ef/tiny)."""
    from echoflow_models import save_model
    from echoflow_models.efnet import EFRegressor, EFRegressorConfig

    torch.manual_seed(0)
    return save_model(EFRegressor(EFRegressorConfig(frames=8, size=32, channels=[8, 8, 8, 8], norm_groups=4, head_hidden=8)),
                      root / "ef" / "tiny")


@pytest.fixture(scope="module")
def info():
    return headless.pack_object_info(headless.load_pack(ROOT))


@pytest.fixture(scope="module")
def ef_root(tmp_path_factory):
    """The tiny EF regressor and a tiny (untrained) LV segmentation network, seg/tiny."""
    from echoflow_models import save_model
    from echoflow_models.lvseg import LVSegConfig, LVSegNet

    root = tmp_path_factory.mktemp("ef_weights")
    save_tiny_ef(root)
    torch.manual_seed(0)
    save_model(LVSegNet(LVSegConfig(channels=[8, 8])), root / "seg" / "tiny")
    return root


@pytest.fixture
def tiny_env(tiny_root, ef_root, monkeypatch):
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", f"{tiny_root}{os.pathsep}{ef_root}")
    return f"{tiny_root}{os.pathsep}{ef_root}"


def tiny_prompt(prompt: dict) -> dict:
    sets = [s for s in TINY if s.split(".")[0] == "*" or any(n["class_type"] == s.split(".")[0]
                                                               for n in prompt.values())]
    return headless.apply_overrides(prompt, sets)


def test_the_four_workflows_ship_with_api_twins():
    names = {p.stem for p in UI_FILES}
    assert names == {p.stem for p in API_FILES}
    assert {"echoflow_full_pipeline", "echoflow_masked_image", "echoflow_ef_sweep", "echoflow_dataset_batch"} <= names


# ------------------------------------------------------------------------------ UI workflow validity
def _input_spec(info: dict, ctype: str, name: str):
    for section in ("required", "optional"):
        if name in info[ctype]["input"].get(section, {}):
            return section, info[ctype]["input"][section][name]
    return None, None


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_node_definitions(path, info):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(lk[0] for lk in wf["links"])
    links = {}
    for lk in wf["links"]:
        assert len(lk) == 6
        link_id, origin, oslot, target, tslot, ltype = lk
        assert link_id not in links, f"duplicate link {link_id}"
        links[link_id] = lk
        src, dst = nodes[origin], nodes[target]
        assert src["outputs"][oslot]["type"] == ltype and link_id in src["outputs"][oslot]["links"]
        slot = dst["inputs"][tslot]
        assert slot["link"] == link_id and slot["type"] == ltype
        assert info[src["type"]]["output"][oslot] == ltype
        _section, spec = _input_spec(info, dst["type"], slot["name"])
        assert spec is not None, f"{dst['type']} has no input {slot['name']}"
        want = "COMBO" if isinstance(spec[0], list) else spec[0]
        assert want == ltype, f"link {link_id}: {ltype} into {dst['type']}.{slot['name']} ({want})"
    has_output = False
    for node in wf["nodes"]:
        ctype = node["type"]
        if ctype in FRONTEND_ONLY:
            continue
        assert ctype in info, f"missing node type {ctype}"
        d = info[ctype]
        has_output |= d["output_node"]
        assert node["mode"] == 0
        assert node["properties"]["Node name for S&R"] == ctype and node["properties"]["cnr_id"] == "comfyui-echoflow"
        assert [o["type"] for o in node["outputs"]] == list(d["output"])
        assert [o["name"] for o in node["outputs"]] == list(d["output_name"])
        for o in node["outputs"]:
            for link_id in o["links"] or []:
                assert links[link_id][1] == node["id"]
        linked = {i["name"] for i in node["inputs"] if i.get("link") is not None}
        for i in node["inputs"]:
            section, spec = _input_spec(info, ctype, i["name"])
            assert spec is not None, f"{ctype}: unknown input slot {i['name']}"
            if headless.is_widget(spec):
                assert i.get("widget", {}).get("name") == i["name"], f"{ctype}.{i['name']} must be a widget socket"
        # every link-only required input is connected
        for name in d["input_order"].get("required", []):
            spec = d["input"]["required"][name]
            if not headless.is_widget(spec):
                assert name in linked, f"node {node['id']} ({ctype}): required input {name} is not connected"
        # widget count includes the control_after_generate values
        layout = headless.widget_layout(d)
        values = node["widgets_values"]
        assert len(values) == len(layout), f"node {node['id']} ({ctype}): {len(values)} widget values, {len(layout)} widgets"
        for (name, control), value in zip(layout, values, strict=True):
            if control:
                assert value in ("fixed", "increment", "decrement", "randomize")
                continue
            _section, spec = _input_spec(info, ctype, name)
            kind, opts = spec[0], spec[1]
            if isinstance(kind, list):
                assert value in kind, f"{ctype}.{name}: {value!r} not in {kind}"
            elif kind == "INT":
                assert isinstance(value, int) and opts["min"] <= value <= opts["max"], f"{ctype}.{name}={value}"
            elif kind == "FLOAT":
                assert isinstance(value, (int, float)) and opts["min"] <= value <= opts["max"], f"{ctype}.{name}"
            elif kind == "STRING":
                assert isinstance(value, str)
            elif kind == "BOOLEAN":
                assert isinstance(value, bool)
    assert has_output, "a workflow needs an output node"
    for model in wf.get("models", []):
        assert model["directory"] == "echoflow" and model["url"].startswith("https://huggingface.co/HReynaud/EchoFlow/")
    # they default to the bundled demo weights
    for node in wf["nodes"]:
        if node["type"].startswith("EchoFlowLoad"):
            assert node["widgets_values"][0] == "demo"


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_workflows_animate_with_the_video_models_own_guidance(path):
    """The shipped workflows leave guidance on auto (-1): each video model uses its recommended value."""
    animate = [n for n in json.loads(path.read_text()).values() if n["class_type"] == "EchoFlowAnimate"]
    assert animate and all(n["inputs"]["guidance"] == -1.0 for n in animate)


def test_animate_auto_guidance_is_the_loaded_models_recommendation():
    from echoflow_models.checkpoint import read_recommended_guidance
    from echoflow_models.weights import bundled_weights_root

    (lvfm_folder,) = (bundled_weights_root() / "lvfm").iterdir()
    recommended = read_recommended_guidance(lvfm_folder)
    assert recommended is not None and recommended != 1.0
    M = headless.load_pack().NODE_CLASS_MAPPINGS
    assert M["EchoFlowAnimate"].INPUT_TYPES()["required"]["guidance"][1]["default"] == -1.0
    (lvfm,) = M["EchoFlowLoadVideoFlow"]().load("demo", "fp32")
    latents = {"samples": torch.zeros(1, 4, 28, 28), "view": "A4C"}
    out = M["EchoFlowAnimate"]().animate(lvfm, latents, 50.0, 1, "euler", -1.0, 0)
    assert out["ui"]["guidance"] == [recommended] and out["result"][0]["guidance"] == recommended
    explicit = M["EchoFlowAnimate"]().animate(lvfm, latents, 50.0, 1, "euler", 1.0, 0)
    assert explicit["ui"]["guidance"] == [1.0]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_agrees_with_its_api_twin(path, info):
    ui = json.loads(path.read_text())
    api = json.loads((path.parent / "api" / path.name).read_text())
    converted = headless.ui_to_api(ui, info)
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa: E731
    assert strip(converted) == strip(api)


def test_converter_counts_control_after_generate(info):
    wf = json.loads((ROOT / "workflows" / "echoflow_full_pipeline.json").read_text())
    sampler = next(n for n in wf["nodes"] if n["type"] == "EchoFlowSampleImage")
    sampler["widgets_values"].pop(sampler["widgets_values"].index("fixed"))
    with pytest.raises(headless.WorkflowError, match="widget values but the node has"):
        headless.ui_to_api(wf, info)


# ------------------------------------------------------------------------------ in-process execution
@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_runs_in_process(path, tiny_env, tmp_path):
    from echoflow_models.video_io import read_video

    prompt = tiny_prompt(json.loads(path.read_text()))
    ui = headless.run_prompt(prompt, output_dir=tmp_path, log=None)
    assert ui, "no output node reported anything"
    saved = [f for out in ui.values() for v in out.get("echoflow_video", []) for f in v["files"]]
    if "dataset" in path.stem:
        from echoflow_models.echonet import read_filelist

        rows = read_filelist(tmp_path / "echoflow" / "echonet_synthetic")
        assert len(rows) >= 1 and all(r.number_of_frames == 8 for r in rows)
        assert all((tmp_path / "echoflow" / "echonet_synthetic" / "Videos" / f"{r.file_name}.avi").is_file()
                   for r in rows)
    else:
        assert saved and all(f.endswith(".mp4") for f in saved)
        frames, _ = read_video(tmp_path / saved[0])
        assert frames.shape[0] == 8
        if "sweep" in path.stem:
            assert frames.shape[2] == 3 * 112 + 2 * 4  # three EFs side by side
            checks = [out for out in ui.values() if "echoflow_ef" in out]
            assert len(checks) == 3 and all("target" in c["text"][0] for c in checks)
            # both instruments side by side, and each video's LV contour previewed
            assert all(len(c["echoflow_ef_seg"]) == 1 and "| segmentation " in c["text"][0] for c in checks)
            contours = [out for out in ui.values() if "echoflow_lv" in out]
            assert len(contours) == 3 and all(out["animated"] == [True] for out in contours)


def test_a_ui_workflow_saved_before_estimate_ef_had_a_method_runs_as_before(info, tiny_env, tmp_path):
    """Estimate EF gained optional widgets (method, volume_method, fps): a workflow saved without them converts
    with their defaults (the regressor alone, as it always ran); a required widget value missing is still an error."""
    wf = json.loads((ROOT / "workflows" / "echoflow_ef_sweep.json").read_text())
    for node in wf["nodes"]:
        if node["type"] == "EchoFlowEstimateEF":
            node["widgets_values"] = []
            node["inputs"] = [i for i in node["inputs"] if i["name"] != "seg_model"]
    prompt = headless.ui_to_api(wf, info)
    checks = [k for k, v in prompt.items() if v["class_type"] == "EchoFlowEstimateEF"]
    assert len(checks) == 3 and all("method" not in prompt[k]["inputs"] for k in checks)
    prompt = {k: v for k, v in tiny_prompt(prompt).items() if v["class_type"] != "EchoFlowSegmentLV"}
    ui = headless.run_prompt(prompt, output_dir=tmp_path, log=None)
    reports = [ui[k]["text"][0] for k in checks]
    assert all(r.startswith("video 0: EF ") and "segmentation" not in r for r in reports)
    assert all("echoflow_ef_seg" not in ui[k] for k in checks)
    loader = next(n for n in wf["nodes"] if n["type"] == "EchoFlowLoadLVSegmentation")
    loader["widgets_values"] = ["demo"]
    with pytest.raises(headless.WorkflowError, match="1 widget values but the node has 2"):
        headless.ui_to_api(wf, info)


def test_run_accepts_ui_workflows_and_sets(tiny_env, tmp_path, run_cli):
    out = tmp_path / "o"
    code, _, err = run_cli(["run", ROOT / "workflows" / "echoflow_full_pipeline.json", "--out", out, "--quiet",
                            *[a for s in TINY if "EFRegressor" not in s and "LVSegmentation" not in s
                              for a in ("--set", s)],
                            "--set", "EchoFlowSaveVideo.filename_prefix=cli/run"], main=headless.main)
    assert code == 0, err
    assert (out / "cli" / "run_00001_.mp4").is_file()
    meta = json.loads((out / "cli" / "run_00001_.json").read_text())
    assert meta["workflow"]["version"] == 0.4 and meta["prompt"]["5"]["inputs"]["steps"] == 2


def test_runner_errors_are_clear(tiny_env, tmp_path):
    prompt = json.loads((ROOT / "workflows" / "api" / "echoflow_full_pipeline.json").read_text())
    with pytest.raises(headless.WorkflowError, match=r"node 5 \(EchoFlowSampleImage\): view: 'XYZ' is not one of"):
        headless.run_prompt(headless.apply_overrides(prompt, ["EchoFlowSampleImage.view=XYZ"]), output_dir=tmp_path,
                            log=None)
    with pytest.raises(headless.WorkflowError, match="above the maximum"):
        headless.run_prompt(headless.apply_overrides(prompt, ["5.batch_size=100000"]), output_dir=tmp_path, log=None)
    bad = dict(prompt, **{"99": {"class_type": "KSampler", "inputs": {}}})
    with pytest.raises(headless.WorkflowError, match="'KSampler' cannot run in-process.*--server"):
        headless.run_prompt(bad, output_dir=tmp_path, log=None)
    wrong = headless.apply_overrides(prompt, [])
    wrong["6"]["inputs"]["latents"] = ["1", 0]  # a VAE into a latent input
    with pytest.raises(headless.WorkflowError, match="expects ECHOFLOW_LATENT but node 1 output 0 is ECHOFLOW_VAE"):
        headless.run_prompt(wrong, output_dir=tmp_path, log=None)
    missing = headless.apply_overrides(prompt, [])
    del missing["7"]["inputs"]["ef"]
    with pytest.raises(headless.WorkflowError, match="ef: required input missing"):
        headless.run_prompt(missing, output_dir=tmp_path, log=None)
    with pytest.raises(headless.WorkflowError, match="expected NODE.INPUT=VALUE"):
        headless.apply_overrides(prompt, ["steps"])
    with pytest.raises(headless.WorkflowError, match="no node with id, title or class"):
        headless.apply_overrides(prompt, ["Nope.steps=3"])
    with pytest.raises(headless.WorkflowError, match="no output node"):
        headless.run_prompt({"1": prompt["1"]}, output_dir=tmp_path, log=None)
    # a node failing at run time names itself
    failing = tiny_prompt(headless.apply_overrides(prompt, ["EchoFlowLoadPrivacyGate.tau=0.5",
                                                            "EchoFlowLoadPrivacyGate.similarity=\"cosine\""]))
    with pytest.raises(headless.ExecutionError, match=r"node 6 \(EchoFlowPrivacyGate\) failed.*no latent passed"):
        headless.run_prompt(failing, output_dir=tmp_path, log=None)


def test_set_override_forms():
    prompt = json.loads((ROOT / "workflows" / "api" / "echoflow_ef_sweep.json").read_text())
    out = headless.apply_overrides(prompt, ["*.steps=3", "Animate EF 25%.ef=20", "EchoFlowSampleImage.seed=9",
                                            "EchoFlowSaveVideo.filename_prefix=a b"])
    assert {v["inputs"]["steps"] for v in out.values() if "steps" in v["inputs"]} == {3}
    assert sorted(v["inputs"]["ef"] for v in out.values() if v["class_type"] == "EchoFlowAnimate") == [20, 45.0, 65.0]
    assert next(v for v in out.values() if v["class_type"] == "EchoFlowSaveVideo")["inputs"]["filename_prefix"] == "a b"
    with pytest.raises(headless.WorkflowError, match="matches nodes"):
        headless.apply_overrides(prompt, ["EchoFlowAnimate.ef=3"])
    assert prompt != out  # the input is not modified


# The full pipeline runs on the demo weights by default; the other three (several 64-frame videos each)
# only in the slow run: at the tiny sizes they run above, in test_api_workflow_runs_in_process.
DEMO_RUNS = [p if p.stem == "echoflow_full_pipeline" else pytest.param(p, marks=pytest.mark.slow)
             for p in API_FILES]


@pytest.mark.parametrize("path", DEMO_RUNS, ids=lambda p: p.stem)
def test_api_workflow_runs_on_the_bundled_demo_weights(path, tmp_path, monkeypatch):
    from echoflow_models.weights import bundled_weights_root

    if not bundled_weights_root().is_dir():
        pytest.skip("bundled demo weights (echoflow_models/weights/phantom) are not installed")
    prompt = json.loads(path.read_text())
    if any(n["class_type"] == "EchoFlowLoadLVSegmentation" for n in prompt.values()) \
            and not (bundled_weights_root() / "seg").is_dir():
        pytest.skip("the workflow reads EF by LV segmentation, and the bundled seg model "
                    "(echoflow_models/weights/phantom/seg/phantom-unet) is not there yet")
    monkeypatch.delenv("ECHOFLOW_MODEL_PATH", raising=False)
    prompt = headless.apply_overrides(prompt, ["*.steps=4"])
    ui = headless.run_prompt(prompt, output_dir=tmp_path, log=None)
    assert ui
    saved = [f for out in ui.values() for v in out.get("echoflow_video", []) for f in v["files"]]
    if "dataset" not in path.stem:  # a 64-frame video of the demo's LVFM came out
        from echoflow_models.video_io import read_video

        assert saved and read_video(tmp_path / saved[0])[0].shape[0] == 64


# ---------------------------------------------------------------------------------- generate-dataset
def test_generate_dataset_resumes_without_touching_finished_videos(gen, tmp_path):
    from echoflow_models.echonet import read_filelist

    out = tmp_path / "ds"
    code, _, err = gen(out, "--count", "3", "--ef-range", "30", "50", "--val-frac", "0.5")
    assert code == 0, err
    rows = read_filelist(out)
    assert len(rows) == 3 and all(30 <= row.ef <= 50 for row in rows)
    assert {row.extra["Source"] for row in rows} == {"EchoFlow"} and rows[0].extra["View"] == "A4C"
    first = {row.file_name: (out / "Videos" / f"{row.file_name}.avi").stat().st_mtime_ns for row in rows}
    code, _, err = gen(out, "--count", "5", "--ef-range", "30", "50", "--val-frac", "0.5")
    assert code == 0, err
    rows = read_filelist(out)
    assert len(rows) == 5 and len({row.file_name for row in rows}) == 5
    for name, mtime in first.items():
        assert (out / "Videos" / f"{name}.avi").stat().st_mtime_ns == mtime
    code, _, err = gen(out, "--count", "5", "--ef-range", "30", "50", "--val-frac", "0.5")
    assert code == 0 and len(read_filelist(out)) == 5
    # another split (or seed, tau, EF range, steps, weights) under the same prefix would mix two datasets
    code, _, err = gen(out, "--count", "6", "--ef-range", "30", "50")
    assert code == 2 and "made with other settings" in err and "val_frac: 0.5 -> 0.0" in err
    assert len(read_filelist(out)) == 5


def test_generate_dataset_shards_across_ranks(gen, tmp_path):
    from echoflow_models.dataset_shards import read_shard_rows
    from echoflow_models.echonet import read_filelist

    out = tmp_path / "ds"
    for rank in (0, 1):
        code, _, err = gen(out, "--count", "3", env={"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
        assert code == 0, err
    rows = read_filelist(out)
    assert [row.file_name for row in rows] == ["synth_0000000", "synth_0000001", "synth_0000002"]
    assert {p.name for p in (out / "shards").glob("*.csv")} == {"synth.rank0.csv", "synth.rank1.csv"}
    assert [r.file_name for r in read_shard_rows(out / "shards" / "synth.rank1.csv")] == ["synth_0000001"]
    single = tmp_path / "single"
    assert gen(single, "--count", "3")[0] == 0
    assert len(read_filelist(single)) == 3


def test_generate_dataset_stops_when_the_gate_rejects_everything(gen, tmp_path):
    out = tmp_path / "ds"
    code, _, err = gen(out, "--count", "2", "--tau", "0.01", "--similarity", "cosine", "--max-candidates", "4")
    assert code == dataset_maker.EXIT_GATE_REJECTED and "passed the privacy gate" in err
    skipped = (out / "shards" / "synth.rank0.skipped.csv").read_text().splitlines()
    assert len(skipped) == 5 and all(",privacy," in line for line in skipped[1:])  # header + 4 candidates
    assert not any((out / "Videos").glob("*.avi")) and not (out / "FileList.csv").exists()


def test_candidate_helpers_are_deterministic():
    assert dataset_maker.candidate_ef(5, 20, 80) == dataset_maker.candidate_ef(5, 20, 80)
    assert 20 <= dataset_maker.candidate_ef(7, 20, 80) <= 80
    assert sorted(s for r in range(3) for s in dataset_maker.rank_slots(10, r, 3)) == list(range(10))
    splits = [dataset_maker.candidate_split(i, 0.1, 0.1) for i in range(2000)]
    assert 120 < splits.count("VAL") < 280 and 120 < splits.count("TEST") < 280
    assert set(splits) == {"TRAIN", "VAL", "TEST"}
    assert dataset_maker.candidate_split(17, 0.1, 0.1) == splits[17]  # a pure function of the index
    assert dataset_maker.candidate_split(5, 0.0, 0.0) == "TRAIN"  # no VAL / TEST share: everything trains
    efs = [dataset_maker.candidate_ef(i, 20, 80) for i in range(200)]
    assert min(efs) < 30 and max(efs) > 70 and len(set(efs)) > 150  # spread over the range, not one value
