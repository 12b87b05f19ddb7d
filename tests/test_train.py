"""Training: every stage runs a few steps on a tiny phantom dataset and writes a checkpoint that `load_model`
loads strictly; resume continues the same run; the bundled demo weights load strictly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from echoflow_models import load_model
from echoflow_models.checkpoint import save_model
from echoflow_models.efnet import EFRegressor, EFRegressorConfig
from echoflow_models.train import train
from echoflow_models.train.all import PRESETS
from echoflow_models.train.data import LatentSet, MaskSource, select_records
from echoflow_models.train.latent_cache import load_latent_cache
from echoflow_models.train.reid import choose_tau
from echoflow_models.weights import bundled_weights_root

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """5 phantom patients x 2 views, 8 frames each (every split present)."""
    from echoflow_models.echonet import write_phantom_dataset

    root = tmp_path_factory.mktemp("train") / "ds"
    write_phantom_dataset(root, 5, seed=3, views=("A4C", "PSAX"), num_frames=8)
    return root


@pytest.fixture(scope="module")
def tiny_vae(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    train("vae", data=str(tiny_data), out=str(out), threads=1, quiet=True, **TINY["vae"])
    return out


@pytest.fixture(scope="module")
def tiny_cache(tiny_data, tiny_vae, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cache")
    cache, scaling = folder / "latents", folder / "scaling.pt"
    train("latents", data=str(tiny_data), vae=str(tiny_vae), out=str(cache), scaling_out=str(scaling),
          phantom_masks=True, threads=1, quiet=True)
    return cache, scaling


def _state(folder: Path) -> dict:
    return torch.load(str(folder / "training" / "state.pt"), weights_only=True)


def test_vae_checkpoint_loads_strictly(tiny_vae):
    vae = load_model(tiny_vae)
    assert vae.class_name == "AutoencoderKL"
    assert vae.config.block_out_channels == [8, 8, 8]
    assert (tiny_vae / "training" / "summary.json").is_file()
    z = vae.encode(torch.zeros(1, 3, 112, 112)).mean
    assert z.shape == (1, 4, 28, 28)


def test_vae_resume_continues_and_refuses_to_clobber(tiny_data, tiny_vae, tmp_path):
    run = tmp_path / "vae"
    shutil.copytree(tiny_vae, run)
    with pytest.raises(SystemExit, match="--resume"):
        train("vae", data=str(tiny_data), out=str(run), threads=1, quiet=True, **TINY["vae"])
    opts = {**TINY["vae"], "steps": 5}
    summary = train("vae", data=str(tiny_data), out=str(run), resume=True, threads=1, quiet=True, **opts)
    assert summary["steps"] == 5
    assert _state(run)["step"] == 5
    load_model(run)


def test_latent_cache_has_masks_views_and_scaling(tiny_cache):
    cache_path, scaling_path = tiny_cache
    cache = load_latent_cache(cache_path)
    assert cache["mean"].dtype == torch.float16 and cache["mean"].shape[1:] == (4, 28, 28)
    assert int(cache["offsets"][-1]) == cache["mean"].shape[0] == 10 * 8
    assert set(cache["views"].tolist()) == {0, 1}
    train_set = LatentSet(cache, "TRAIN")
    assert train_set.has_mask[:].all() and train_set.masks[:].any()  # phantom masks for every TRAIN frame
    scaling = torch.load(str(scaling_path), weights_only=True)
    assert scaling["mean"].shape == (4,) and (scaling["std"] > 0).all()


def test_flow_and_reid_stages_write_loadable_checkpoints(tiny_cache, tmp_path):
    cache, scaling = tiny_cache
    common = {"latents": str(cache), "scaling": str(scaling), "threads": 1, "quiet": True}
    train("lifm", out=str(tmp_path / "lifm"), **common, **TINY["lifm"])
    lifm = load_model(tmp_path / "lifm")
    assert lifm.config.in_channels == 5 and lifm.config.num_embeds_ada_norm == 3
    v = lifm(torch.randn(2, 4, 28, 28), torch.rand(2), torch.tensor([0, 3]), torch.zeros(2, 1, 28, 28))
    assert v.shape == (2, 4, 28, 28)

    train("lvfm", out=str(tmp_path / "lvfm"), **common, **TINY["lvfm"])
    lvfm = load_model(tmp_path / "lvfm")
    assert lvfm.config.input_size == [8, 28, 28] and lvfm.config.caption_channels == 1
    out = lvfm(torch.randn(1, 4, 8, 28, 28), torch.rand(1), torch.tensor([0.55]), torch.randn(1, 4, 28, 28),
               drop_ef=torch.tensor([True]))
    assert out.shape == (1, 4, 8, 28, 28)

    summary = train("reid", out=str(tmp_path / "reid"), **common, **TINY["reid"])
    reid = load_model(tmp_path / "reid")
    assert reid.config.width == TINY["reid"]["width"]
    bank = torch.load(str(tmp_path / "reid" / "anatomies_phantom.pt"), weights_only=True)
    assert bank.shape == (3 * 2 * TINY["reid"]["bank_frames"], TINY["reid"]["embed_dim"])  # 3 TRAIN patients x 2 views
    calib = json.loads((tmp_path / "reid" / "training" / "calibration.json").read_text())
    assert 0 < summary["tau"] <= 1 and "predecessor_rule" in calib
    # only the backbone is shipped: the siamese head lives in the training state, not the release folder
    assert sorted(p.name for p in (tmp_path / "reid").iterdir()) == [
        "anatomies_phantom.pt", "backbone.safetensors", "config.yaml", "training"]


def test_clips_can_be_conditioned_on_their_first_frame(tiny_cache):
    cache, _ = tiny_cache
    data = LatentSet(load_latent_cache(cache), "TRAIN")
    clip = data.sample_clips(3, 8, torch.Generator().manual_seed(0), cond_frame="first")
    torch.testing.assert_close(clip.cond, clip.video[:, :, 0])
    other = data.sample_clips(3, 8, torch.Generator().manual_seed(0), cond_frame="random")
    assert not torch.equal(other.cond, other.video[:, :, 0])
    with pytest.raises(ValueError, match="cond_frame"):
        data.sample_clips(1, 8, torch.Generator(), cond_frame="last")


def test_images_can_be_only_the_first_frame_of_each_video(tiny_cache):
    cache, _ = tiny_cache
    data = LatentSet(load_latent_cache(cache), "TRAIN")
    z, views, _, _ = data.sample_images(32, torch.Generator().manual_seed(0), "first")
    firsts = data.frames(data.offsets[:-1])
    for image, view in zip(z, views, strict=True):  # every image is some video's first frame, with that video's view
        match = [i for i in range(len(firsts)) if torch.equal(image, firsts[i])]
        assert match and int(data.views[match[0]]) == int(view)
    anywhere, _, _, _ = data.sample_images(32, torch.Generator().manual_seed(0), "all")
    assert not all(any(torch.equal(a, f) for f in firsts) for a in anywhere)
    with pytest.raises(ValueError, match="frames"):
        data.sample_images(1, torch.Generator(), "middle")


def test_phantom_masks_follow_the_recipe_phase_and_heart_rate(tmp_path):
    """A dataset rendered at a fixed phase and heart rate (`train dataset --phase --heart-rate`) gets its
    masks re-rendered the same way (the writer refuses a re-render that does not match the video)."""
    from echoflow_models.phantom import PatientAnatomy, render_video
    from echoflow_models.train.data import write_phantom_masks

    data = tmp_path / "ds"
    train("dataset", out=str(data), patients=2, seed=5, views="A4C", frames=8, extra_videos=0, phase=0.0,
          heart_rate=75.0, split="1,0,0", quiet=True)
    assert write_phantom_masks(data, "TRAIN", max_frames=4) == 2
    rec = select_records(data, ("TRAIN",))[0]
    masks = dict(__import__("numpy").load(data / "Masks" / f"{rec.file_name}.npz"))
    video = render_video(PatientAnatomy.sample(int(rec.extra["PatientSeed"]), "A4C"), rec.ef, num_frames=4,
                         fps=rec.fps, phase=0.0, seed=0, heart_rate=75.0)
    assert (masks["masks"][:4] == video.lv_masks).all() and masks["has_mask"].tolist() == [True] * 4 + [False] * 4


def test_resume_reproduces_an_uninterrupted_run(tiny_cache, tmp_path):
    cache, scaling = tiny_cache
    opts = {**TINY["lifm"], "latents": str(cache), "scaling": str(scaling), "threads": 1, "quiet": True,
            "ema": 0.9, "warmup": 2, "schedule": "constant"}
    train("lifm", out=str(tmp_path / "straight"), **{**opts, "steps": 4})
    train("lifm", out=str(tmp_path / "split"), **{**opts, "steps": 2})
    train("lifm", out=str(tmp_path / "split"), resume=True, **{**opts, "steps": 4})
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "split")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=k)


def test_ef_regressor_trains_and_loads(tiny_data, tmp_path):
    opts = {**TINY["ef"], "eval_split": "VAL"}
    summary = train("ef", data=str(tiny_data), out=str(tmp_path / "ef"), threads=1, quiet=True, **opts)
    model = load_model(tmp_path / "ef")
    assert isinstance(model, EFRegressor)
    assert model.config.ef_scale > 0 and summary["val_n"] == 2
    ef = model(torch.rand(3, 3, 16, 112, 112) * 2 - 1)
    assert ef.shape == (3,) and torch.isfinite(ef).all()


def test_ef_regressor_trains_with_time_and_affine_augmentation(tiny_data, tmp_path):
    opts = {**TINY["ef"], "eval_split": "", "clip_frames": 6, "time_scale": "0.8,1.25", "rotate": 10.0,
            "zoom": 0.1, "shift": 0.05}
    train("ef", data=str(tiny_data), out=str(tmp_path / "ef"), threads=1, quiet=True, **opts)
    model = load_model(tmp_path / "ef")
    assert isinstance(model, EFRegressor) and model.config.clip_frames == 6
    for bad in ("0,1", "1.2,0.9", "fast"):
        with pytest.raises(ValueError, match="--time-scale"):
            train("ef", data=str(tiny_data), out=str(tmp_path / "bad"), threads=1, quiet=True,
                  overwrite=True, **{**opts, "time_scale": bad})


def test_ef_regressor_reads_the_middle_clip_it_was_trained_on():
    model = EFRegressor(EFRegressorConfig(frames=8, size=32, channels=[8, 8, 16, 16], clip_frames=6)).eval()
    video = torch.rand(1, 3, 10, 32, 32) * 2 - 1
    torch.testing.assert_close(model(video), model(video[:, :, 2:8]))
    assert not torch.allclose(model(video), model(video[:, :, :6]))
    torch.testing.assert_close(model(video[:, :, :5]), model(video[:, :, :5]))  # shorter: used whole


def test_time_windows_at_full_length_equal_the_models_own_resampling():
    from echoflow_models.train.ef import random_time_windows

    x = torch.randn(3, 1, 40, 6, 6)
    whole = torch.nn.functional.interpolate(x, size=(16, 6, 6), mode="trilinear", align_corners=False)
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_time_windows(x, 16, (40.0, 40.0), gen), whole)
    torch.testing.assert_close(random_time_windows(x, 16, (50.0, 60.0), gen), whole)  # capped at the clip
    # a ramp in time: every window is increasing, starts inside the clip and spans at least half of it
    ramp = torch.arange(40.0).view(1, 1, 40, 1, 1).expand(64, 1, 40, 2, 2)
    out = random_time_windows(ramp, 16, (20.0, 40.0), gen)[:, 0, :, 0, 0]  # [64, 16]
    assert (out.diff(dim=1) > 0).all() and out.min() >= 0 and out.max() <= 39
    span = (out[:, -1] - out[:, 0]) * 16 / 15  # frames covered
    assert span.min() >= 0.5 * 40 - 1.5 and span.max() <= 40 + 1e-4
    assert out[:, 0].std() > 1.0  # the starts differ
    # clips cut from shorter videos end in padding: their windows stay within the real frames
    valid = torch.tensor([10, 25, 40, 40] * 16)
    out = random_time_windows(ramp, 16, (30.0, 50.0), gen, valid)[:, 0, :, 0, 0]
    assert (out.max(dim=1).values <= valid - 1 + 1e-5).all() and (out.diff(dim=1) >= 0).all()


def test_random_affine_is_identity_at_zero_and_keeps_the_background_black():
    from echoflow_models.train.ef import random_affine

    x = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_affine(x, gen, 0.0, 0.0, 0.0), x, rtol=0, atol=1e-5)
    moved = random_affine(torch.full((4, 1, 2, 16, 16), 1.0), gen, 30.0, 0.2, 0.2)
    assert moved.min() >= -1.0 - 1e-6 and (moved < -0.99).any()  # pixels from outside are black (-1)
    assert torch.equal(moved[:, :, 0], moved[:, :, 1])  # one transform for all frames of a clip


def test_efnet_round_trip(tmp_path):
    model = EFRegressor(EFRegressorConfig(frames=8, size=32, channels=[8, 8, 16, 16]))
    save_model(model, tmp_path / "ef")
    loaded = load_model(tmp_path / "ef")
    x = torch.rand(2, 3, 20, 64, 64) * 2 - 1
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert json.loads((tmp_path / "ef" / "config.json").read_text())["_class_name"] == "EFRegressor"


def test_choose_tau_separates_and_reports_fractions():
    train_sims = torch.tensor([0.9999, 0.99995, 0.99992, 0.9998, 0.99999])
    new_sims = torch.tensor([0.99, 0.995, 0.98, 0.9990, 0.97])
    out = choose_tau(train_sims, new_sims)
    assert 0.999 < out["tau"] <= 0.9998
    assert out["train_rejected_frac"] == 1.0 and out["new_passed_frac"] == 1.0 and out["meets_targets"]


def test_volume_tracings_become_masks(tmp_path, tiny_data):
    root = tmp_path / "ds"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns("Masks"))
    rec = select_records(root, "TRAIN")[0]
    lines = ["FileName,X1,Y1,X2,Y2,Frame", f"{rec.file_name}.avi,56,20,56,90,3"]
    for y in range(25, 90, 5):
        lines.append(f"{rec.file_name}.avi,40,{y},72,{y},3")
    (root / "VolumeTracings.csv").write_text("\n".join(lines) + "\n")
    masks, has = MaskSource(root).masks(rec, 8)
    assert has.tolist() == [False, False, False, True, False, False, False, False]
    assert masks[3].sum() > 1500 and masks[3, 50, 56] and not masks[3, 50, 20] and masks[0].sum() == 0


def test_a_cache_of_partly_traced_videos_keeps_the_traced_frames(tmp_path, tiny_data, tiny_vae):
    """EchoNet-Dynamic traces two frames of each video: the untraced (empty) frames must not stop the cache."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns("Masks"))
    rec = select_records(root, "TRAIN")[0]
    lines = ["FileName,X1,Y1,X2,Y2,Frame", f"{rec.file_name}.avi,56,20,56,90,3"]
    lines += [f"{rec.file_name}.avi,40,{y},72,{y},3" for y in range(25, 90, 5)]
    (root / "VolumeTracings.csv").write_text("\n".join(lines) + "\n")
    train("latents", data=str(root), vae=str(tiny_vae), out=str(tmp_path / "cache"), splits="TRAIN", quiet=True)
    cache = load_latent_cache(tmp_path / "cache")
    first = cache["file_names"].index(rec.file_name)
    start = int(cache["offsets"][first])
    has = cache["has_mask"][start: start + 8]
    assert has.tolist() == [False, False, False, True, False, False, False, False]
    assert cache["masks"][start + 3].any() and not cache["masks"][start: start + 3].any()
    assert int(cache["has_mask"].sum()) == 1


def _train_all_data(tmp_path) -> Path:
    data = tmp_path / "ds"
    train("dataset", out=str(data), patients=5, seed=3, views="A4C,PSAX", frames=8, extra_videos=0,
          split="0.6,0.2,0.2", quiet=True)
    return data


def _check_train_all(work: Path, out: Path, info: str, steps_scale: int, dtype: str) -> None:
    # The LVFM trained on its own set: the same patients re-rendered at one more EF each, full length.
    lvfm_set = json.loads((work / "lvfm_data" / "dataset.json").read_text())
    assert lvfm_set["num_patients"] == 5 and lvfm_set["extra_frames"] == 8 and lvfm_set["videos"] == 20
    assert lvfm_set["phase"] == 0.0 and lvfm_set["heart_rate"] == 75.0  # every clip starts at ED, 75 bpm
    assert load_model(out / "lvfm" / "phantom-stdit").config.caption_adaln is True
    lvfm_cache = load_latent_cache(work / "latents_lvfm")
    assert set(lvfm_cache["splits"]) == {"TRAIN"} and len(lvfm_cache["splits"]) == 3 * 2 * 2
    assert lvfm_cache["has_mask"].any()  # the clips carry LV masks for the LIFM's mask channel
    # the LIFM learned the clips' first frames (end-diastole), the frames the LVFM animates
    lifm_args = json.loads((work / "lifm" / "training" / "args.json").read_text())
    assert lifm_args["latents"] == str(work / "latents_lvfm") and lifm_args["frames"] == "first"
    gates = json.loads((out / "gates.json").read_text())
    assert set(gates) == {"A4C", "PSAX", "PLAX"} and gates["A4C"]["banks"] == ["anatomies_phantom.pt"]
    assert info.count("loads strictly") == 6
    from echoflow_models.pipeline import EchoFlowPipeline

    pipe = EchoFlowPipeline.from_folder(out)
    assert set(pipe.gates) == {"A4C", "PSAX", "PLAX"}
    manifest = json.loads((out / "training.json").read_text())
    assert manifest["dtype"] == dtype and set(manifest["models"]) == {"vae", "lifm", "lvfm", "reid", "ef", "seg"}
    for stage in ("vae", "lifm", "lvfm", "reid", "ef"):  # --steps-scale multiplies every preset step count
        assert manifest["stages"][stage]["steps"] == steps_scale * TINY[stage]["steps"], stage


def test_train_all_exports_a_loadable_weights_root(tmp_path, run_cli):
    """`echoflow train all` in-process, the tiny preset at its own step counts, float32 export."""
    data, work, out = _train_all_data(tmp_path), tmp_path / "work", tmp_path / "weights"
    code, _, err = run_cli(["train", "all", "--data", data, "--work", work, "--out", out, "--preset", "tiny",
                            "--threads", "1", "--quiet"])
    assert code == 0, err
    code, info, err = run_cli(["info", out])
    assert code == 0, err
    _check_train_all(work, out, info, 1, "float32")
    assert all(p.dtype == torch.float32 for p in load_model(out / "lifm" / "phantom-dit").parameters())


@pytest.mark.slow
def test_train_all_command_in_its_own_process(tmp_path):
    """The same as a user runs it: separate processes, twice the steps, float16 export."""
    data, work, out = _train_all_data(tmp_path), tmp_path / "work", tmp_path / "weights"
    cmd = [sys.executable, "-m", "echoflow_models", "train", "all", "--data", str(data), "--work", str(work),
           "--out", str(out), "--preset", "tiny", "--fp16", "--threads", "1", "--quiet", "--steps-scale", "2"]
    subprocess.run(cmd, check=True)
    info = subprocess.run([sys.executable, "-m", "echoflow_models", "info", str(out)], check=True,
                          capture_output=True, text=True).stdout
    _check_train_all(work, out, info, 2, "float16")


# ----------------------------------------------------------------------------------------------------
# The bundled demo weights
# ----------------------------------------------------------------------------------------------------

BUNDLED = bundled_weights_root()
KINDS = {"vae": "phantom-4f4", "lifm": "phantom-dit", "lvfm": "phantom-stdit", "reid": "phantom-4f4",
         "ef": "phantom-r3d", "seg": "phantom-unet"}


def test_bundled_weights_are_complete_and_small():
    for kind, name in KINDS.items():
        assert (BUNDLED / kind / name).is_dir(), f"missing bundled {kind}/{name}"
    for asset in ("scaling.pt", "anatomies_phantom.pt"):
        assert (BUNDLED / "assets" / asset).is_file()
    size = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert size <= 25e6, f"bundled weights are {size / 1e6:.1f} MB (limit 25 MB)"
    gates = json.loads((BUNDLED / "gates.json").read_text())
    for view in ("A4C", "PSAX", "PLAX"):
        assert gates[view]["reid"] == "phantom-4f4" and gates[view]["banks"] == ["anatomies_phantom.pt"]
        assert 0 < gates[view]["tau"] <= 1


def test_bundled_weights_load_strictly(run_cli):
    for kind, name in KINDS.items():
        model = load_model(BUNDLED / kind / name)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    code, out, err = run_cli(["info", BUNDLED])
    assert code == 0, err
    assert out.count("loads strictly") == 6


def test_bundled_weights_make_a_pipeline():
    from echoflow_models.pipeline import EchoFlowPipeline

    pipe = EchoFlowPipeline.from_folder(BUNDLED)
    assert pipe.latent_shape == (4, 28, 28)
    assert pipe.lvfm.num_frames == 64
    assert pipe.scaler.channels == 4


def test_temporal_weight_only_reweights_the_frame_varying_error():
    """The weighted loss keeps an error that varies over the frames at full weight and scales an error that
    is the same in every frame by 1 / (1 + w): motion errors count (1 + w)x more than static ones. Both
    terms vanish at the same optimum (the conditional expectation)."""
    from echoflow_models.train.lvfm import masked_flow_loss

    z0 = torch.zeros(1, 2, 4, 3, 3)
    valid = torch.ones(1, 4, dtype=torch.bool)

    def run(model, w):
        gen = torch.Generator().manual_seed(0)
        import contextlib

        return float(masked_flow_loss(model, z0, None, None, None, valid, gen, 0.0, "cpu",
                                      contextlib.nullcontext(), "uniform", w))

    def static(x, t, ef, cond, drop_ef=None):  # predicts zero: the error is -noise, varying over frames
        return torch.zeros_like(x)

    plain, weighted = run(static, 0.0), run(static, 4.0)
    assert 0.7 * plain < weighted < plain  # noise is mostly frame-varying; only its frame mean is scaled down

    def exact_but_offset(x, t, ef, cond, drop_ef=None):  # error = constant 0.5 everywhere
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape, generator=gen)
        return noise + 0.5

    assert abs(run(exact_but_offset, 0.0) - 0.25) < 1e-6
    assert abs(run(exact_but_offset, 4.0) - 0.25 / 5) < 1e-6


def _hand_cache(efs_per_heart: list[list[float]], frames: int = 6) -> dict:
    """A latent cache with hand-set hearts: heart k has one video per EF in efs_per_heart[k]."""
    names, ids, efs = [], [], []
    for k, efs_k in enumerate(efs_per_heart):
        for j, ef in enumerate(efs_k):
            names.append(f"H{k}_{j}")
            ids.append(f"H{k}/A4C")
            efs.append(ef)
    n = len(names)
    return {"file_names": names, "splits": ["TRAIN"] * n, "identities": ids,
            "views": torch.zeros(n, dtype=torch.long), "ef": torch.tensor(efs), "fps": torch.full((n,), 32.0),
            "offsets": torch.arange(n + 1) * frames, "mean": torch.randn(n * frames, 4, 28, 28).half(),
            "std": None, "masks": torch.zeros(n * frames, 28, 28, dtype=torch.bool),
            "has_mask": torch.zeros(n * frames, dtype=torch.bool)}


def test_ef_pairs_are_one_heart_at_two_efs_sharing_the_conditioning_noise():
    data = LatentSet(_hand_cache([[20.0, 50.0, 80.0], [30.0, 60.0], [45.0]]), "TRAIN")
    gen = torch.Generator().manual_seed(1)
    clip = data.sample_clips(40, 6, gen, noise_cond=0.1, cond_frame="first", ef_pairs=True)
    ef = (clip.ef * 100).round().view(20, 2)
    heart = {20: 0, 50: 0, 80: 0, 30: 1, 60: 1, 45: 2}
    for a, b in ef.tolist():
        assert heart[a] == heart[b]
        assert a != b or heart[a] == 2  # the lone video of heart 2 pairs with itself
    noise = clip.cond - clip.video[:, :, 0]
    torch.testing.assert_close(noise[0::2], noise[1::2], rtol=0, atol=1e-6)
    assert 0.05 < float(noise.std()) < 0.2
    with pytest.raises(ValueError, match="even"):
        data.sample_clips(3, 6, gen, ef_pairs=True)


def test_shared_randn_groups_rows_and_is_plain_randn_otherwise():
    from echoflow_models.train.data import shared_randn

    a = shared_randn((6, 3), torch.Generator().manual_seed(0), 2)
    assert torch.equal(a[0::2], a[1::2]) and not torch.equal(a[0], a[2])
    torch.testing.assert_close(shared_randn((4, 3), torch.Generator().manual_seed(5)),
                               torch.randn((4, 3), generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="multiple"):
        shared_randn((5, 3), torch.Generator(), 2)


def test_paired_loss_gives_both_clips_of_a_pair_one_flow_time_and_noise():
    import contextlib

    from echoflow_models.train.lvfm import masked_flow_loss

    seen = {}

    def record(x, t, ef, cond, drop_ef=None):
        seen["x"], seen["t"] = x.clone(), t.clone()
        return torch.zeros_like(x)

    z0 = torch.zeros(4, 2, 3, 5, 5)  # identical clips: equal inputs iff equal noise and t
    valid = torch.ones(4, 3, dtype=torch.bool)
    masked_flow_loss(record, z0, None, None, None, valid, torch.Generator().manual_seed(0), 0.0, "cpu",
                     contextlib.nullcontext(), share=2)
    assert torch.equal(seen["t"][0::2], seen["t"][1::2]) and seen["t"][0] != seen["t"][2]
    assert torch.equal(seen["x"][0::2], seen["x"][1::2]) and not torch.equal(seen["x"][0], seen["x"][2])
    masked_flow_loss(record, z0, None, None, None, valid, torch.Generator().manual_seed(0), 0.0, "cpu",
                     contextlib.nullcontext())
    assert not torch.equal(seen["x"][0], seen["x"][1])  # unpaired: every clip its own noise
