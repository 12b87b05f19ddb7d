"""`echoflow evaluate` on a tiny subset: every measure of the issue lands in the JSON with the seeds and sizes
used, the Markdown table is written, and bad weights fail with a clear message."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from echoflow_models.echonet import EchoNetWriter
from echoflow_models.evaluate import EvalSizes, flicker_ef_coupling, frames_to_regressor_input, markdown_table
from echoflow_models.weights import bundled_weights_root

REQUIRED = {
    "vae": ("psnr_db", "ssim"),
    "ef_fidelity": ("mae", "pearson_r"),
    "synthetic_vs_real": ("real_mae", "synthetic_mae", "mae_ratio"),
    "privacy": ("tau", "train_rejected_frac", "new_passed_frac"),
    "timing": ("generate_s",),
}


@pytest.mark.slow
def test_quick_evaluation_writes_every_measure(tmp_path):
    out, table = tmp_path / "evaluation.json", tmp_path / "evaluation.md"
    cmd = [sys.executable, "-m", "echoflow_models", "evaluate", "--quick", "--quiet", "--threads", "1",
           "--guidance", "2", "--seed", "3", "--out", str(out), "--markdown", str(table),
           "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for section, keys in REQUIRED.items():
        for key in keys:
            value = report[section][key]
            assert isinstance(value, float), (section, key, value)
    assert report["seed"] == 3
    assert report["sizes"] == {**EvalSizes.quick().__dict__, "guidance": 2.0}
    assert report["timing"]["guidance"] == 2.0
    assert math.isfinite(report["vae"]["psnr_db"]) and report["vae"]["psnr_db"] > 10.0
    assert 0.0 <= report["privacy"]["train_rejected_frac"] <= 1.0
    assert 0.0 <= report["privacy"]["new_passed_frac"] <= 1.0
    assert len(report["ef_fidelity"]["measured"]) == EvalSizes.quick().fidelity_videos
    response = report["ef_response"]
    assert response["requested"] == [20.0, 50.0, 80.0]
    assert len(response["measured"]) == EvalSizes.quick().response_images
    assert math.isfinite(response["slope_mean"]) and math.isfinite(response["between_image_std"])
    flicker = report["synthetic_vs_real"]["texture_flicker"]
    assert set(flicker) == {"real", "synthetic", "synthetic_relabeled"}
    assert flicker["real"]["videos"] == EvalSizes.quick().train_videos and flicker["real"]["flicker_mean"] > 0
    # the synthetic videos' flicker is read against the requested labels, then against the relabelled ones
    assert flicker["synthetic"]["flicker_mean"] == flicker["synthetic_relabeled"]["flicker_mean"]
    # the synthetic training set was written in the EchoNet layout, the real one beside it
    assert (tmp_path / "work" / "synthetic" / "FileList.csv").is_file()
    assert (tmp_path / "work" / "real" / "FileList.csv").is_file()
    assert table.read_text().strip() == markdown_table(report)


def test_evaluation_refuses_weights_without_an_ef_regressor(tmp_path):
    root = tmp_path / "weights"
    root.mkdir()
    for kind in ("vae", "lifm", "lvfm", "reid", "assets"):  # everything but ef/
        (root / kind).symlink_to(bundled_weights_root() / kind, target_is_directory=True)
    for name in ("gates.json", "training_data.json"):
        (root / name).symlink_to(bundled_weights_root() / name)
    proc = subprocess.run([sys.executable, "-m", "echoflow_models", "evaluate", "--quick", "--quiet",
                           "--weights", str(root), "--out", str(tmp_path / "e.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no EF regressor" in proc.stderr
    assert not (tmp_path / "e.json").exists()


def test_regressor_input_is_grey_in_minus_one_to_one():
    frames = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    frames[..., 0] = 255
    x = frames_to_regressor_input(frames)
    assert x.shape == (1, 3, 4, 8, 8)
    assert float(x.max()) == pytest.approx(255 / 128 - 1) and float(x.min()) == pytest.approx(255 / 128 - 1)


@pytest.mark.slow
def test_tune_guidance_writes_the_lowest_mae_choice_as_the_models_default(tmp_path):
    """`echoflow tune-guidance --write` measures every candidate on the same validation seeds and stores
    the lowest-MAE one beside the video model, where the pipeline picks it up as its default."""
    import shutil

    from echoflow_models.pipeline import EchoFlowPipeline

    bundled = bundled_weights_root()
    root = tmp_path / "weights"
    root.mkdir()
    for item in bundled.iterdir():  # everything shared, except a private copy of lvfm/ to write into
        if item.name == "lvfm":
            shutil.copytree(item, root / "lvfm")
        else:
            (root / item.name).symlink_to(item, target_is_directory=item.is_dir())
    for folder in (root / "lvfm").iterdir():
        (folder / "sampling.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "echoflow_models", "tune-guidance", "--weights", str(root), "--candidates",
           "1,4", "--videos", "3", "--image-steps", "2", "--video-steps", "2", "--threads", "1", "--quiet",
           "--write"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = (root / "lvfm").iterdir()
    chosen = json.loads((folder / "sampling.json").read_text())
    table = chosen["candidates"]
    assert set(table) == {"1", "4"} and all(len(row["measured"]) == 3 for row in table.values())
    assert chosen["guidance"] == min((1.0, 4.0), key=lambda g: (table[f"{g:g}"]["mae"], g))
    assert chosen["seed"] == 50_000 and chosen["regressor"].startswith("ef/")
    assert EchoFlowPipeline.from_folder(root, views=["A4C"]).default_guidance == chosen["guidance"]
    bad = subprocess.run([*cmd[:7], "1,x"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--candidates" in bad.stderr


def _tiny_dataset(root):
    from echoflow_models.echonet import write_phantom_dataset

    write_phantom_dataset(root, 3, seed=5, num_frames=8, split_fractions=(1.0, 0.0, 0.0))
    return root


def test_relabel_dataset_replaces_ef_and_keeps_the_requested_labels(tmp_path):
    import csv

    import torch

    from echoflow_models.echonet import read_filelist
    from echoflow_models.efnet import EFRegressor, EFRegressorConfig
    from echoflow_models.evaluate import predict_ef, relabel_dataset

    root = _tiny_dataset(tmp_path / "ds")
    before = {r.file_name: r.ef for r in read_filelist(root)}
    torch.manual_seed(0)
    model = EFRegressor(EFRegressorConfig(frames=8, size=32, channels=[8, 8, 16, 16])).eval()
    summary = relabel_dataset(root, model, "tiny")
    from echoflow_models.echonet import load_echonet_videos

    expected = predict_ef(model, [frames for _, frames in load_echonet_videos(root)])
    after = read_filelist(root)
    assert [r.ef for r in after] == pytest.approx(expected.tolist(), abs=1e-3)
    rows = list(csv.DictReader(open(root / "FileList.csv", newline="")))
    assert {r["FileName"]: float(r["RequestedEF"]) for r in rows} == pytest.approx(before)
    assert summary["videos"] == 3 and summary["regressor"] == "tiny"
    assert json.loads((root / "relabel.json").read_text()) == summary
    # again: the requested labels are still the originals, not the first relabelling
    relabel_dataset(root, model, "tiny")
    rows = list(csv.DictReader(open(root / "FileList.csv", newline="")))
    assert {r["FileName"]: float(r["RequestedEF"]) for r in rows} == pytest.approx(before)
    assert list(rows[0]).count("RequestedEF") == 1


def test_relabel_dataset_cli_names_the_problem(tmp_path):
    cmd = [sys.executable, "-m", "echoflow_models", "relabel-dataset", str(tmp_path / "missing")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "missing" in proc.stderr and "FileList.csv" in proc.stderr
    cmd = [sys.executable, "-m", "echoflow_models", "relabel-dataset", str(tmp_path),
           "--regressor", str(bundled_weights_root() / "vae" / "phantom-4f4")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not an EF regressor" in proc.stderr


def test_mean_over_seeds_averages_and_keeps_each_run():
    from echoflow_models.evaluate import mean_over_seeds

    out = mean_over_seeds([{"mae": 4.0, "r2": 0.5}, {"mae": 8.0, "r2": 0.7}])
    assert out["mae"] == 6.0 and out["r2"] == pytest.approx(0.6)
    assert out["mae_sd"] == 2.0 and out["mae_per_seed"] == [4.0, 8.0]
    with pytest.raises(ValueError, match="regressor_seeds"):
        mean_over_seeds([])


def test_flicker_ef_coupling_reads_how_flicker_follows_the_labels(tmp_path):
    """Videos whose frame-to-frame flicker grows with their EF label couple at r = 1 with a positive slope;
    a set whose flicker does not depend on the label reads no slope; fewer than 3 videos give NaN."""
    signs = (-1.0) ** np.arange(16)[:, None, None]
    coupled, flat = tmp_path / "coupled", tmp_path / "flat"
    with EchoNetWriter(coupled, codec="ffv1") as w, EchoNetWriter(flat, codec="ffv1") as v:
        for i, ef in enumerate((20.0, 40.0, 60.0, 80.0)):
            amplitude = ef / 10.0
            frames = (100.0 + amplitude * signs * np.ones((16, 8, 8))).astype(np.uint8)
            w.add(f"V{i}", frames, 32, ef, float("nan"), float("nan"), "TRAIN")
            v.add(f"V{i}", (100.0 + 5.0 * signs * np.ones((16, 8, 8))).astype(np.uint8), 32, ef,
                  float("nan"), float("nan"), "TRAIN")
    result = flicker_ef_coupling(coupled)
    assert result["videos"] == 4 and result["pearson_r_ef"] == pytest.approx(1.0, abs=1e-3)
    assert result["slope_per_10_ef"] == pytest.approx(0.8, abs=0.05)  # flicker = 0.8 x amplitude = 0.08 x EF
    steady = flicker_ef_coupling(flat)
    assert steady["flicker_mean"] == pytest.approx(4.0, abs=0.05) and math.isnan(steady["pearson_r_ef"])
    assert math.isnan(steady["slope_per_10_ef"])  # no spread in the flicker: no slope either
    assert math.isnan(flicker_ef_coupling(coupled, split="TEST")["pearson_r_ef"])  # no TEST videos
