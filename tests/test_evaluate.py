"""`python -m research evaluate` on a tiny subset: every measure of the issue lands in the JSON with the seeds and sizes
used, the Markdown table is written, and bad weights fail with a clear message."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from echoflow_models.echonet import EchoNetWriter
from echoflow_models.weights import bundled_weights_root
from research.evaluate import EvalSizes, flicker_ef_coupling, frames_to_regressor_input, markdown_table

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = {
    "vae": ("psnr_db", "ssim"),
    "ef_fidelity": ("mae", "pearson_r"),
    "synthetic_vs_real": ("real_mae", "synthetic_mae", "mae_ratio"),
    "privacy": ("tau", "train_rejected_frac", "new_passed_frac"),
    "timing": ("generate_s",),
}


def check_report(report: dict, sizes: EvalSizes, seed: int, work, table_text: str,
                 min_psnr: float | None = 10.0) -> None:
    """What every `python -m research evaluate` report must hold, whatever its sizes: each measure of the issue as a
    float, the seeds and sizes used, and measures that agree with the datasets left in `work`."""
    from echoflow_models.echonet import read_filelist
    from research.evaluate import REQUESTED_EF_COLUMN, flicker_coupling, video_flicker

    for section, keys in REQUIRED.items():
        for key in keys:
            value = report[section][key]
            assert isinstance(value, float), (section, key, value)
    assert report["seed"] == seed
    assert report["sizes"] == sizes.__dict__
    assert report["timing"]["guidance"] == sizes.guidance
    assert math.isfinite(report["vae"]["psnr_db"]) and (min_psnr is None or report["vae"]["psnr_db"] > min_psnr)
    assert report["vae"]["frames"] == sizes.vae_patients * sizes.vae_frames
    assert 0.0 <= report["privacy"]["train_rejected_frac"] <= 1.0
    assert 0.0 <= report["privacy"]["new_passed_frac"] <= 1.0
    assert report["privacy"]["train_frames"] == sizes.privacy_patients * sizes.privacy_frames
    assert len(report["ef_fidelity"]["measured"]) == sizes.fidelity_videos
    response = report["ef_response"]
    assert response["requested"] == [20.0, 50.0, 80.0]
    assert len(response["measured"]) == sizes.response_images
    assert math.isfinite(response["slope_mean"]) and math.isfinite(response["between_image_std"])
    svr = report["synthetic_vs_real"]
    assert svr["mae_ratio"] == pytest.approx(svr["synthetic_mae"] / svr["real_mae"])
    assert all(len(svr[arm]["mae_per_seed"]) == sizes.regressor_seeds
               for arm in ("real", "synthetic", "synthetic_relabeled"))
    assert svr["train_videos"] == {"real": sizes.train_videos, "synthetic": sizes.train_videos}
    # the synthetic training set was written in the EchoNet layout, the real one beside it
    synthetic, real = work / "synthetic", work / "real"
    assert (synthetic / "FileList.csv").is_file() and (real / "FileList.csv").is_file()
    flicker = svr["texture_flicker"]
    assert set(flicker) == {"real", "synthetic", "synthetic_relabeled"}
    assert flicker["real"]["videos"] == sizes.train_videos and flicker["real"]["flicker_mean"] > 0
    # each flicker reading pairs the videos written with the labels of its row: the requested EFs (kept in
    # the RequestedEF column) and the relabelled ones (now the EF column); recomputed from the files here
    relabeled_ef, measured = video_flicker(synthetic)
    rows = read_filelist(synthetic)
    requested_ef = np.array([float(r.extra[REQUESTED_EF_COLUMN]) for r in rows])
    assert not np.allclose(requested_ef, relabeled_ef)  # the relabelling did change the labels
    assert flicker["synthetic"] == pytest.approx(flicker_coupling(measured, requested_ef), nan_ok=True)
    assert flicker["synthetic_relabeled"] == pytest.approx(flicker_coupling(measured, relabeled_ef), nan_ok=True)
    assert svr["relabel"]["mae_vs_requested"] == pytest.approx(float(np.abs(relabeled_ef - requested_ef).mean()),
                                                               abs=1e-3)
    assert table_text.strip() == markdown_table(report)


@pytest.fixture
def research_cli(run_cli):
    """run `python -m research ARGV` in-process."""
    from research.__main__ import main as research_main

    return lambda argv: run_cli(argv, main=research_main)


@pytest.fixture(scope="module")
def tiny_eval_root(tiny_root, tmp_path_factory):
    """The tiny reference checkpoints (8-frame LVFM) with a tiny EF regressor and the recipe of the phantom
    patients their gate guards: a weights root `evaluate` accepts, at a fraction of the demo's cost."""
    import shutil

    from echoflow_models import save_model
    from echoflow_models.efnet import EFRegressor, EFRegressorConfig
    from echoflow_models.lvseg import LVSegConfig, LVSegNet

    root = tmp_path_factory.mktemp("eval") / "weights"
    shutil.copytree(tiny_root, root)
    torch.manual_seed(0)
    save_model(EFRegressor(EFRegressorConfig(frames=8, size=32, channels=[8, 8, 8, 8], norm_groups=4, head_hidden=8)),
               root / "ef" / "tiny")
    save_model(LVSegNet(LVSegConfig(channels=[8, 8])), root / "seg" / "tiny")
    recipe = {"num_patients": 4, "seed": 0, "views": ["A4C"], "split_fractions": [1.0, 0.0, 0.0]}
    (root / "training_data.json").write_text(json.dumps(recipe))
    return root


# The reduced form run by default: the same command, every measure, the tiny models and the smallest sizes
# that still compute each measure (a correlation needs 3 fidelity videos; every split holds 2 videos).
REDUCED = ["--train-videos", "2", "--test-videos", "2", "--regressor-steps", "1", "--regressor-seeds", "1"]


def test_evaluate_command_writes_every_measure(tiny_eval_root, tmp_path, research_cli):
    out, table = tmp_path / "evaluation.json", tmp_path / "evaluation.md"
    code, printed, err = research_cli(["evaluate", "--weights", tiny_eval_root, "--quick", "--quiet", "--threads", "1",
                                  "--guidance", "2", "--seed", "3", *REDUCED, "--out", out, "--markdown", table,
                                  "--work", tmp_path / "work"])
    assert code == 0, err
    sizes = EvalSizes(**{**EvalSizes.quick().__dict__, "train_videos": 2, "test_videos": 2, "regressor_steps": 1,
                         "regressor_seeds": 1, "guidance": 2.0})
    report = json.loads(out.read_text())
    check_report(report, sizes, 3, tmp_path / "work", table.read_text(), min_psnr=None)
    assert report["privacy"]["train_patients"] == 3 and report["weights"] == str(tiny_eval_root)
    # the second instrument: every fidelity video read by segmentation (or counted unreadable), and its own
    # error measured on real phantom videos as rendered and through the A-VAE
    by_seg = report["ef_fidelity"]["by_segmentation"]
    assert by_seg["n"] + by_seg["unreadable"] == sizes.fidelity_videos == len(by_seg["table"])
    assert [row[0] for row in by_seg["table"]] == report["ef_fidelity"]["requested"]
    for variant in ("rendered", "through_vae"):
        inst = report["seg_instrument"][variant]
        assert inst["n"] + inst["unreadable"] == sizes.fidelity_videos
    assert "LV segmentation" in table.read_text()
    assert printed.strip().startswith(markdown_table(report)) and f"wrote {out}" in printed


@pytest.mark.slow
def test_quick_evaluation_writes_every_measure(tmp_path):
    """The whole `--quick` evaluation as a user starts it (a separate process)."""
    out, table = tmp_path / "evaluation.json", tmp_path / "evaluation.md"
    cmd = [sys.executable, "-m", "research", "evaluate", "--quick", "--quiet", "--threads", "1",
           "--guidance", "2", "--seed", "3", "--out", str(out), "--markdown", str(table),
           "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = EvalSizes(**{**EvalSizes.quick().__dict__, "guidance": 2.0})
    check_report(json.loads(out.read_text()), sizes, 3, tmp_path / "work", table.read_text())


def test_evaluation_refuses_weights_without_an_ef_regressor(tmp_path, research_cli):
    root = tmp_path / "weights"
    root.mkdir()
    for kind in ("vae", "lifm", "lvfm", "reid", "assets"):  # everything but ef/
        (root / kind).symlink_to(bundled_weights_root() / kind, target_is_directory=True)
    for name in ("gates.json", "training_data.json"):
        (root / name).symlink_to(bundled_weights_root() / name)
    code, _, err = research_cli(["evaluate", "--quick", "--quiet", "--weights", root, "--out", tmp_path / "e.json"])
    assert code != 0
    assert "no EF regressor" in err
    assert not (tmp_path / "e.json").exists()


def test_regressor_input_is_grey_in_minus_one_to_one():
    from echoflow_models.vae import frames_to_model_range

    frames = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    frames[..., 0] = 255  # a red frame: read as the rounded mean of its channels (85), as everywhere
    x = frames_to_regressor_input(frames)
    assert x.shape == (1, 3, 4, 8, 8)
    assert float(x.max()) == pytest.approx(85 / 128 - 1) and float(x.min()) == pytest.approx(85 / 128 - 1)
    # the VAE reads colour the same way, and gray frames replicated to RGB are unchanged by the rule
    assert torch.equal(frames_to_model_range(torch.from_numpy(frames))[0, 0], x[0, 0, 0])
    gray = np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    assert torch.equal(frames_to_regressor_input(np.repeat(gray[..., None], 3, -1)), frames_to_regressor_input(gray))


def _private_lvfm_root(tmp_path, source):
    """The weights of `source`, shared by symlink, except a private copy of lvfm/ without a sampling.json."""
    import shutil

    root = tmp_path / "weights"
    root.mkdir()
    for item in source.iterdir():
        if item.name == "lvfm":
            shutil.copytree(item, root / "lvfm")
        else:
            (root / item.name).symlink_to(item, target_is_directory=item.is_dir())
    for folder in (root / "lvfm").iterdir():
        (folder / "sampling.json").unlink(missing_ok=True)
    return root


def _check_tuned(root, videos: int) -> None:
    from echoflow_models.pipeline import EchoFlowPipeline

    (folder,) = (root / "lvfm").iterdir()
    chosen = json.loads((folder / "sampling.json").read_text())
    table = chosen["candidates"]
    assert set(table) == {"1", "4"} and all(len(row["measured"]) == videos for row in table.values())
    # the rule: the lowest MAE by segmentation (unreadable = worst), MAEs within 0.25 of it tie, then the
    # regressor's MAE decides
    from research.evaluate import SEG_TIE_POINTS

    def seg_mae(g: float) -> float:
        value = table[f"{g:g}"]["by_segmentation"].get("mae", math.inf)
        return value if math.isfinite(value) else math.inf

    floor = min(seg_mae(g) for g in (1.0, 4.0))
    tied = [g for g in (1.0, 4.0) if seg_mae(g) <= floor + SEG_TIE_POINTS]
    assert chosen["guidance"] == min(tied, key=lambda g: (table[f"{g:g}"]["mae"], g))
    assert "segmentation" in chosen["criterion"]
    assert chosen["seed"] == 50_000 and chosen["regressor"].startswith("ef/")
    assert EchoFlowPipeline.from_folder(root, views=["A4C"]).default_guidance == chosen["guidance"]


TUNE = ["--candidates", "1,4", "--videos", "3", "--threads", "1", "--quiet", "--write"]


def test_tune_guidance_writes_the_lowest_mae_choice_as_the_models_default(tiny_eval_root, tmp_path, research_cli):
    """`python -m research tune-guidance --write` measures every candidate on the same validation seeds and stores
    the lowest-MAE one beside the video model, where the pipeline picks it up as its default (here with
    the tiny models; the slow test below runs the bundled demo weights in a process of their own)."""
    root = _private_lvfm_root(tmp_path, tiny_eval_root)
    code, printed, err = research_cli(["tune-guidance", "--weights", root, *TUNE, "--image-steps", "1",
                                  "--video-steps", "1"])
    assert code == 0, err
    _check_tuned(root, 3)
    assert "best: guidance" in printed and "wrote" in printed
    code, _, err = research_cli(["tune-guidance", "--weights", root, "--candidates", "1,x"])
    assert code != 0 and "--candidates" in err


@pytest.mark.slow
def test_tune_guidance_command_in_its_own_process(tmp_path):
    root = _private_lvfm_root(tmp_path, bundled_weights_root())
    cmd = [sys.executable, "-m", "research", "tune-guidance", "--weights", str(root), *TUNE,
           "--image-steps", "2", "--video-steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check_tuned(root, 3)


def test_tune_guidance_help_shows_percent_signs():
    import argparse

    from research.evaluate import add_subcommands

    parser = argparse.ArgumentParser(prog="echoflow")
    sub = parser.add_subparsers()
    add_subcommands(sub)
    text = sub.choices["tune-guidance"].format_help()
    assert "20-80 %" in " ".join(text.split()) and "%%" not in text


def _tiny_dataset(root):
    from echoflow_models.echonet import write_phantom_dataset

    write_phantom_dataset(root, 3, seed=5, num_frames=8, split_fractions=(1.0, 0.0, 0.0))
    return root


def test_relabel_dataset_replaces_ef_and_keeps_the_requested_labels(tmp_path):
    import csv

    import torch

    from echoflow_models.echonet import read_filelist
    from echoflow_models.efnet import EFRegressor, EFRegressorConfig
    from research.evaluate import predict_ef, relabel_dataset

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


def test_relabel_dataset_cli_names_the_problem(tmp_path, research_cli):
    code, _, err = research_cli(["relabel-dataset", tmp_path / "missing"])
    assert code != 0 and "missing" in err and "FileList.csv" in err
    code, _, err = research_cli(["relabel-dataset", tmp_path, "--regressor", bundled_weights_root() / "vae" / "phantom-4f4"])
    assert code != 0 and "not an EF regressor" in err


def test_mean_over_seeds_averages_and_keeps_each_run():
    from research.evaluate import mean_over_seeds

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


def test_training_patients_of_one_view_are_those_of_all_views_filtered(tmp_path):
    """Rendering only the asked view (the privacy evaluation's shortcut) gives the same patients, in order."""
    from research.evaluate import training_patients

    recipe = {"num_patients": 4, "seed": 4, "views": ["A4C", "PSAX", "PLAX"], "split_fractions": [0.5, 0.5, 0.0]}
    (tmp_path / "training_data.json").write_text(json.dumps(recipe))
    every = training_patients(tmp_path)
    assert len(every) == 2 * 3  # 2 TRAIN patients x 3 views; the VAL half is not in the bank
    for view in ("A4C", "PSAX", "PLAX"):
        assert training_patients(tmp_path, view) == [p for p in every if p.view == view]
    assert training_patients(tmp_path, "A2C") == []
    with pytest.raises(FileNotFoundError, match="training_data.json"):
        training_patients(tmp_path / "nowhere", "A4C")
