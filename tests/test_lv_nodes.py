"""The LV segmentation nodes without ComfyUI: Load LV Segmentation, Segment LV (masks, contour overlay, EF by
segmentation), Estimate EF with both instruments, and LV labels from Save EchoNet Dataset.

Measurements are checked with a stand-in segmentation module that returns the phantom's true masks (the
node logic is under test, not a network's accuracy); a tiny untrained LVSegNet checks the loading path."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import headless
from echoflow_models import save_model
from echoflow_models.lvseg import LVSegConfig, LVSegNet
from echoflow_models.phantom import PatientAnatomy, render_video

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 48


@pytest.fixture(scope="module")
def InputError(pack):
    return sys.modules[headless.PACK_NAME + ".nodes.common"].EchoFlowInputError


@pytest.fixture(scope="module")
def phantoms():
    """Two A4C phantom videos of one anatomy at EF 35 and 65 (their true masks are the oracle's answer)."""
    anatomy = PatientAnatomy.sample(5, "A4C")
    return [render_video(anatomy, ef, num_frames=FRAMES) for ef in (35.0, 65.0)]


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_weights")
    torch.manual_seed(0)
    save_model(LVSegNet(LVSegConfig(channels=[8, 8])), root / "seg" / "x")
    return root


@pytest.fixture
def env(seg_root, tmp_path, monkeypatch, bridge):
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", str(seg_root))
    monkeypatch.delenv("ECHOFLOW_WEIGHTS", raising=False)
    bridge.set_output_directory(tmp_path / "out")
    yield tmp_path / "out"
    bridge.set_output_directory(None)


class OracleSeg(torch.nn.Module):
    """The LVSegNet contract (`config.size`, `segment(uint8 frames, chunk)` -> bool masks) answered with the
    phantom's true masks; counts its calls so a test can tell whether segmentation ran."""

    def __init__(self, videos):
        super().__init__()
        self.config = LVSegConfig()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so the bridge can place it
        self.videos = videos
        self.calls = 0

    def segment(self, frames, chunk=32):
        self.calls += 1
        gray = frames[..., 0].numpy()
        for video in self.videos:
            if np.array_equal(gray, video.frames):
                return torch.from_numpy(video.lv_masks.copy())
        raise AssertionError("frames of no known phantom video")


class ConstantEF(torch.nn.Module):
    """The EF regressor contract, reading 50 + the mean grey level (so two videos read differently)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, frames):
        return 50.0 + self.scale * frames.mean(dim=(1, 2, 3, 4))


def _images(videos) -> torch.Tensor:
    frames = np.concatenate([v.frames for v in videos])
    return torch.from_numpy(frames).float().div(255.0)[..., None].expand(-1, -1, -1, 3).contiguous()


def _info(videos, privacy: bool = False) -> dict:
    run = {"view": "A4C"}
    items = [{"ef": v.requested_ef if v.requested_ef == v.requested_ef else v.ef} for v in videos]
    if privacy:
        run["privacy"] = {"tau": 0.98, "passed": len(videos)}
        items = [dict(item, max_similarity=0.5, seed=i) for i, item in enumerate(items)]
    return {"frames_per_video": FRAMES, "videos": len(videos), "run": run, "items": items}


@pytest.fixture
def oracle(bridge, phantoms):
    return bridge.ManagedModel(OracleSeg(phantoms), torch.float32, "seg", "oracle")


# ------------------------------------------------------------------------------------------ Segment LV
def test_segment_lv_measures_each_video_and_draws_its_contour(M, env, phantoms, oracle):
    images, info = _images(phantoms), _info(phantoms)
    out = M["EchoFlowSegmentLV"]().segment(oracle, images, "area-length", 32.0, "auto", info)
    masks, overlay, mean, report, details_json = out["result"]
    truth = np.concatenate([v.lv_masks for v in phantoms])
    assert masks.shape == (2 * FRAMES, 112, 112) and masks.dtype == torch.float32
    assert np.array_equal(masks.numpy() > 0.5, truth)
    details = json.loads(details_json)
    for video, d in zip(phantoms, details, strict=True):
        assert d["ef"] == pytest.approx(video.ef, abs=1.0)
        assert len(d["volumes"]) == FRAMES and d["view"] == "A4C" and d["target"] == pytest.approx(video.requested_ef)
        assert all(min(abs(s - f) for f in d["es_frames"]) <= 1 for s in video.es_frames)
    assert mean == pytest.approx((details[0]["ef"] + details[1]["ef"]) / 2)
    lines = report.splitlines()
    assert len(lines) == 3 and lines[2].startswith("mean EF by segmentation")
    assert "EDV" in lines[0] and "ESV" in lines[0] and "ED frames" in lines[0] and "repaired frames none" in lines[0]
    assert f"target {phantoms[1].requested_ef:.1f}%, error " in lines[1]
    # the overlay: the frames unchanged except a 1-pixel outline on the cavity's border, green at ED, red at ES
    u8 = (overlay * 255).round().to(torch.uint8)
    changed = (u8 != (images * 255).round().to(torch.uint8)).any(-1)
    assert changed.any() and bool((changed <= torch.from_numpy(truth)).all())  # only cavity pixels are drawn on
    ed, es = details[0]["ed_frames"][0], details[0]["es_frames"][0]
    assert u8[ed][changed[ed]][0].tolist() == [40, 220, 90] and u8[es][changed[es]][0].tolist() == [255, 60, 60]
    interior = torch.from_numpy(truth[ed]).clone()
    interior[1:-1, 1:-1] &= interior[:-2, 1:-1] & interior[2:, 1:-1] & interior[1:-1, :-2] & interior[1:-1, 2:]
    assert not changed[ed][interior].any()  # the inside of the cavity stays visible
    ui = out["ui"]
    assert ui["animated"] == [True, True] and all(p["filename"].endswith(".webp") for p in ui["images"])
    assert all((env / ".echoflow_temp" / p["filename"]).is_file() for p in ui["images"])
    assert [s["ef"] for s in ui["echoflow_lv"]] == [d["ef"] for d in details]
    json.dumps(ui, allow_nan=False)  # the browser parses it: no NaN


def test_segment_lv_discs_psax_and_a_video_without_cavity(M, env, bridge, phantoms):
    blank = render_video(PatientAnatomy.sample(6, "A4C"), 50.0, num_frames=FRAMES)
    blank.lv_masks[:] = False
    seg = bridge.ManagedModel(OracleSeg([blank, *phantoms]), torch.float32, "seg", "oracle")
    out = M["EchoFlowSegmentLV"]().segment(seg, _images([blank, phantoms[0]]), "discs", 32.0, "PSAX",
                                           _info([blank, phantoms[0]]))
    _masks, _overlay, mean, report, details = out["result"]
    assert "video 0: no LV cavity found" in report and "area^1.5" in report.splitlines()[1]
    assert json.loads(details)[0]["ef"] is None and out["ui"]["echoflow_lv"][0]["ef"] is None
    assert mean == pytest.approx(json.loads(details)[1]["ef"])  # the video without a cavity does not count
    assert json.loads(details)[1]["method"] == "discs" and json.loads(details)[1]["view"] == "PSAX"


def test_segment_lv_refuses_bad_inputs_before_segmenting(M, env, bridge, phantoms, oracle, InputError):
    node = M["EchoFlowSegmentLV"]()
    images = _images(phantoms[:1])
    ef_model = bridge.ManagedModel(ConstantEF(), torch.float32, "ef", "ef")
    cases = [
        (dict(seg_model=None), "seg_model: connect EchoFlow Load LV Segmentation"),
        (dict(seg_model=ef_model), "got an EchoFlow ef model, not an LV segmentation model; connect EchoFlow Load LV"),
        (dict(images=images[:, :64, :64]), "frames are 64x64.*resize the frames to 112x112"),
        (dict(fps=0.0), "fps must be a positive number"),
        (dict(fps=float("nan")), "fps must be a positive number"),
        (dict(method="simpson"), "volume method must be one of area-length, discs"),
        (dict(view="A2C"), "view must be one of auto, A4C"),
        (dict(video_info={"frames_per_video": 7, "videos": 1, "run": {}, "items": [{}]}), "do not split"),
    ]
    for change, message in cases:
        args = dict(seg_model=oracle, images=images, method="area-length", fps=32.0, view="auto")
        args.update(change)
        with pytest.raises(InputError, match=message):
            node.segment(**args)
    assert oracle.module.calls == 0


# ------------------------------------------------------------------------------------------ Estimate EF
def test_estimate_ef_reports_both_instruments_side_by_side(M, env, bridge, phantoms, oracle, InputError):
    node = M["EchoFlowEstimateEF"]()
    ef_model = bridge.ManagedModel(ConstantEF(), torch.float32, "ef", "constant")
    images, info = _images(phantoms), _info(phantoms)
    alone = node.estimate(ef_model, images, info)  # an existing workflow: only ef_model connected
    regressed = alone["ui"]["echoflow_ef"]
    category = sys.modules[headless.PACK_NAME + ".nodes.common"].ef_category(regressed[0])
    assert "echoflow_ef_seg" not in alone["ui"] and oracle.module.calls == 0
    assert alone["result"][1].splitlines()[0] == (f"video 0: EF {regressed[0]:.1f}% ({category}), target "
                                                  f"{info['items'][0]['ef']:.1f}%, error "
                                                  f"{abs(regressed[0] - info['items'][0]['ef']):.1f}")
    assert node.estimate(ef_model, images, info, seg_model=oracle, method="regressor")["result"] == alone["result"]
    assert oracle.module.calls == 0  # method regressor: the segmentation model is not run
    both = node.estimate(ef_model, images, info, seg_model=oracle)  # auto: both when seg_model is connected
    mean, report = both["result"]
    seg = both["ui"]["echoflow_ef_seg"]
    assert both["ui"]["echoflow_ef"] == regressed and mean == pytest.approx(sum(regressed) / 2)
    assert seg == pytest.approx([v.ef for v in phantoms], abs=1.0)
    first = report.splitlines()[0]
    assert first.startswith(f"video 0: regressor EF {regressed[0]:.1f}% ({category}) | segmentation EF {seg[0]:.1f}%")
    assert f"error regressor {abs(regressed[0] - info['items'][0]['ef']):.1f}, segmentation " in first
    assert report.splitlines()[-1] == f"mean EF regressor {mean:.1f}%, segmentation {sum(seg) / 2:.1f}%"
    only = node.estimate(ef_model, images, info, seg_model=oracle, method="segmentation", volume_method="discs")
    assert "echoflow_ef" not in only["ui"] and only["result"][0] == pytest.approx(sum(only["ui"]["echoflow_ef_seg"]) / 2)
    assert only["result"][1].startswith("video 0: by segmentation EF ")
    calls = oracle.module.calls
    for method in ("both", "segmentation"):
        with pytest.raises(InputError, match=f"seg_model: method '{method}' measures EF by segmentation: connect "
                                             "EchoFlow Load LV Segmentation"):
            node.estimate(ef_model, images, info, method=method)
    with pytest.raises(InputError, match="method must be one of auto, regressor, segmentation, both"):
        node.estimate(ef_model, images, info, seg_model=oracle, method="mean")
    with pytest.raises(InputError, match="seg_model: got an EchoFlow ef model"):
        node.estimate(ef_model, images, info, seg_model=ef_model, method="both")
    with pytest.raises(InputError, match="resize the frames to 112x112"):
        node.estimate(ef_model, images[:, :100, :100], None, seg_model=oracle)
    assert oracle.module.calls == calls


# ------------------------------------------------------------------------------------------ the loader
def test_lv_segmentation_loader_lists_loads_and_segments(M, env, InputError):
    names = M["EchoFlowLoadLVSegmentation"].INPUT_TYPES()["required"]["model_name"][0]
    assert names[0] == "demo" and "seg/x" in names
    assert "seg/x" not in M["EchoFlowLoadEFRegressor"].INPUT_TYPES()["required"]["model_name"][0]
    (seg,) = M["EchoFlowLoadLVSegmentation"]().load("seg/x", "auto")
    assert seg.kind == "seg" and seg.dtype == torch.float32 and type(seg._holder).__name__ == "EchoFlowLVSeg"
    frames = torch.rand(10, 112, 112, 3, generator=torch.Generator().manual_seed(1))
    masks, overlay, _ef, report, _ = M["EchoFlowSegmentLV"]().segment(seg, frames, "area-length", 32.0, "A4C")["result"]
    assert masks.shape == (10, 112, 112) and overlay.shape == (10, 112, 112, 3) and report.startswith("video 0: ")
    with pytest.raises(FileNotFoundError, match="models/echoflow/seg/<name>"):
        M["EchoFlowLoadLVSegmentation"]().load("seg/nope", "auto")
    assert M["EchoFlowLoadLVSegmentation"].IS_CHANGED(model_name="seg/nope") == "missing:seg/nope"


def test_the_bundled_seg_model_reads_the_phantoms_ef(M, bridge, phantoms, monkeypatch):
    from echoflow_models.weights import bundled_weights_root

    if not (bundled_weights_root() / "seg").is_dir():
        pytest.skip("the bundled LV segmentation model (echoflow_models/weights/phantom/seg/) is not there yet")
    monkeypatch.delenv("ECHOFLOW_MODEL_PATH", raising=False)
    (seg,) = M["EchoFlowLoadLVSegmentation"]().load("demo", "auto")
    out = M["EchoFlowSegmentLV"]().segment(seg, _images(phantoms), "area-length", 32.0, "A4C", _info(phantoms))
    for video, summary in zip(phantoms, out["ui"]["echoflow_lv"], strict=True):
        assert summary["ef"] == pytest.approx(video.ef, abs=6.0)


# ------------------------------------------------------------------------------- Save EchoNet Dataset
def test_save_dataset_writes_lv_labels_for_each_saved_video(M, env, bridge, phantoms, oracle, InputError):
    from echoflow_models.echonet import read_filelist
    from echoflow_models.train.data import MaskSource

    node = M["EchoFlowSaveEchoNetDataset"]()
    images, info = _images(phantoms), _info(phantoms, privacy=True)
    out = node.save(images, 55.0, "echoflow/ds", "TRAIN", 32.0, "synth", info, seg_model=oracle)
    root = env / out["result"][0]
    rows = read_filelist(root)
    assert [r.file_name for r in rows] == ["synth_00001", "synth_00002"]
    assert "LV labels (Masks/*.npz, ED/ES in VolumeTracings.csv) for 2 of 2 video(s)" in out["ui"]["text"][0]
    source = MaskSource(root)
    for rec, video in zip(rows, phantoms, strict=True):
        masks, has = source.masks(rec, FRAMES)
        assert has.all() and np.array_equal(masks.numpy(), video.lv_masks)
    with open(root / "VolumeTracings.csv", newline="") as fh:
        traced = list(csv.reader(fh))
    assert traced[0] == ["FileName", "X1", "Y1", "X2", "Y2", "Frame"] and len(traced) == 1 + 4 * 21
    first_frames = list(dict.fromkeys((r[0], int(r[5])) for r in traced[1:]))
    assert [name for name, _ in first_frames] == ["synth_00001.avi"] * 2 + ["synth_00002.avi"] * 2
    es, ed = first_frames[0][1], first_frames[1][1]
    assert phantoms[0].lv_masks[es].sum() < phantoms[0].lv_masks[ed].sum()  # ES first, as EchoNet orders them
    before = (root / "VolumeTracings.csv").read_bytes()
    again = node.save(images, 55.0, "echoflow/ds", "TRAIN", 32.0, "synth", info, seg_model=oracle)
    assert again["result"][1] == 2 and (root / "VolumeTracings.csv").read_bytes() == before  # nothing twice


def test_save_dataset_refuses_labels_it_cannot_write_before_writing(M, env, bridge, phantoms, InputError):
    node = M["EchoFlowSaveEchoNetDataset"]()
    blank = render_video(PatientAnatomy.sample(6, "A4C"), 50.0, num_frames=FRAMES)
    blank.lv_masks[:] = False
    seg = bridge.ManagedModel(OracleSeg([blank, *phantoms]), torch.float32, "seg", "oracle")
    videos = [phantoms[0], blank]
    with pytest.raises(InputError, match=r"has no LV cavity.*\(video 1 of this batch\). Nothing was written; "
                                         "disconnect seg_model"):
        node.save(_images(videos), 55.0, "echoflow/ds", "TRAIN", 32.0, "synth", _info(videos, True), seg_model=seg)
    assert not (env / "echoflow" / "ds").exists()
    foreign = env / "echoflow" / "real"
    foreign.mkdir(parents=True)
    (foreign / "VolumeTracings.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="dataset_dir: .*not EchoNet-Dynamic's.*Nothing was written"):
        node.save(_images(phantoms), 55.0, "echoflow/real", "TRAIN", 32.0, "synth", _info(phantoms, True),
                  seg_model=seg)
    assert sorted(p.name for p in foreign.iterdir()) == ["VolumeTracings.csv"]
    ef_model = bridge.ManagedModel(ConstantEF(), torch.float32, "ef", "constant")
    with pytest.raises(InputError, match="seg_model: got an EchoFlow ef model"):
        node.save(_images(phantoms), 55.0, "echoflow/ds", "TRAIN", 32.0, "synth", _info(phantoms, True),
                  seg_model=ef_model)
    assert not (env / "echoflow" / "ds").exists()
