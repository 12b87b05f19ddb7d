"""Fail closed, lose nothing: bad inputs through the CLI, the library and the node classes.

Every refusal names the problem and happens before any model loads; nothing a user had is removed or
rewritten; the privacy gate never judges what it cannot judge.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import headless
from echoflow_models import echonet
from echoflow_models.checkpoint import CheckpointError, load_model, load_tensor_asset
from echoflow_models.cli import main
from echoflow_models.echonet import EchoNetFormatError, read_filelist
from echoflow_models.pipeline import EchoFlowPipeline, GenerationError, preprocess_mask
from echoflow_models.privacy import (
    GateConfigError,
    bank_latent_shape,
    decide_tau,
    gate_spec,
    load_gate,
    read_gates_manifest,
)
from echoflow_models.reid import PrivacyGate
from echoflow_models.sampling import sample_flow
from echoflow_models.synthetic_dataset import append_synthetic

ROOT = Path(__file__).resolve().parent.parent


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes: to prove that nothing was written, changed or removed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: options must be refused before compute."""

    def forbidden(*_a, **_k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(EchoFlowPipeline, "from_folder", forbidden)


# ------------------------------------------------------------------------------------------------ CLI
def _generate_cases(tmp: Path) -> list[tuple[list[str], str]]:
    blocker = tmp / "a_file"
    blocker.write_text("not a folder")
    existing = tmp / "existing.mp4"
    existing.write_bytes(b"user's video")
    (tmp / "notes.txt").write_text("not an image")
    return [
        (["--out", str(tmp / "x.xyz")], "--out .*must end in .mp4 or .avi"),
        (["--out", str(tmp / "x.avi"), "--avi"], "--out is already .avi; drop --avi"),
        (["--out", str(existing)], "exists; pass --overwrite"),
        (["--out", str(blocker / "x.mp4")], "--out: cannot write into"),
        (["--json", str(blocker / "s.json")], "--json: cannot write into"),
        (["--json", str(tmp / "s.txt")], "--json .*must end in .json"),
        (["--max-tries", "0"], "--max-tries must be >= 1"),
        (["--image-steps", "0"], "--image-steps must be >= 1"),
        (["--video-steps", "-3"], "--video-steps must be >= 1"),
        (["--fps", "0"], "--fps must be a positive number"),
        (["--fps", "nan"], "--fps must be a positive number"),
        (["--seed", str(2**70)], "--seed must be in"),
        (["--seed", "-1"], "--seed must be in"),
        (["--ef", "120"], "--ef must be a percentage in"),
        (["--ef", "nan"], "--ef must be a number"),
        (["--tau", "0"], "--tau must be in \\(0, 1\\]"),
        (["--tau", "1.5"], "--tau must be in \\(0, 1\\]"),
        (["--tau", "nan"], "--tau must be a number in \\(0, 1\\]"),
        (["--guidance", "-1"], "--guidance must be in"),
        (["--mask", str(tmp / "missing.png")], "--mask .*cannot read it as an image"),
        (["--mask", str(tmp / "notes.txt")], "--mask .*cannot read it as an image"),
        (["--threads", "0"], "--threads must be >= 1"),
    ]


def test_generate_refuses_bad_options_before_any_compute(tiny_root, tmp_path, capsys, no_models):
    work = tmp_path / "work"
    work.mkdir()
    for extra, message in _generate_cases(work):
        before = _tree(work)
        argv = ["generate", "--weights", str(tiny_root), "--out", str(work / "ok.mp4"), "--quiet", *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
        assert __import__("re").search(message, err), (extra, err)
        assert _tree(work) == before, f"{extra} wrote or removed files"


def test_generate_tau_rule_uses_the_weights_calibration(tmp_path, capsys, no_models):
    demo = ROOT / "echoflow_models" / "weights" / "phantom"
    calibrated = read_gates_manifest(demo)["A4C"]["tau"]
    assert calibrated < 0.9997  # the demo's own calibration, stricter than the release's
    argv = ["generate", "--weights", str(demo), "--out", str(tmp_path / "v.mp4"), "--tau", "0.9997"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "looser than these weights' calibrated tau 0.979" in err and "--allow-looser-tau" in err
    assert not any(tmp_path.iterdir())


def test_generate_dataset_refuses_bad_options_before_any_compute(tiny_root, tmp_path, capsys, no_models):
    out = tmp_path / "ds"
    cases = [
        (["--count", "0"], "--count must be >= 1"),
        (["--count", "2", "--ef-range", "60", "40"], "--ef-range must satisfy"),
        (["--count", "2", "--ef-range", "-5", "40"], "--ef-range must satisfy"),
        (["--count", "2", "--prefix", "../evil"], "--prefix '../evil' must be letters"),
        (["--count", "2", "--prefix", "a/b"], "--prefix 'a/b' must be letters"),
        (["--count", "2", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--count", "2", "--fps", "0"], "--fps must be a positive number"),
        (["--count", "2", "--val-frac", "0.7", "--test-frac", "0.7"], "sum <= 1"),
        (["--count", "2", "--seed", str(2**64)], "--seed must be in"),
        (["--count", "2", "--max-candidates", "0"], "--max-candidates must be >= 1"),
        (["--count", "2", "--tau", "0"], "--tau must be in"),
    ]
    for extra, message in cases:
        argv = ["generate-dataset", "--weights", str(tiny_root), "--out", str(out), "--quiet", *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert __import__("re").search(message, err) and "Traceback" not in err, (extra, err)
        assert not out.exists(), f"{extra} created the dataset folder"
    with pytest.raises(SystemExit) as info:  # argparse's own refusal, also status 2
        main(["generate-dataset", "--weights", str(tiny_root), "--out", str(out), "--count", "1", "--view", "XYZ"])
    assert info.value.code == 2 and "invalid choice: 'XYZ'" in capsys.readouterr().err


def test_the_torchrun_entry_reports_errors_like_the_cli(tmp_path):
    """torchrun starts `python -m echoflow_models generate-dataset`: a bad weights root is one line, status 2."""
    import subprocess
    import sys

    argv = ["generate-dataset", "--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--count", "1"]
    proc = subprocess.run([sys.executable, "-m", "echoflow_models", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: weights folder"), proc.stderr
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def _real_dataset(folder: Path) -> dict[str, bytes]:
    """A 'real' EchoNet-Dynamic folder: the nine standard columns, two videos, and a stray user video."""
    (folder / "Videos").mkdir(parents=True)
    rows = ["FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split",
            "0X1A,61.2,20.1,51.8,112,112,50,10,TRAIN", "0X1B,44.0,40.0,71.4,112,112,50,10,VAL"]
    (folder / "FileList.csv").write_text("\n".join(rows) + "\n")
    for name in ("0X1A", "0X1B", "NOT_LISTED"):
        (folder / "Videos" / f"{name}.avi").write_bytes(name.encode() * 10)
    return _tree(folder)


def test_generate_dataset_never_touches_a_real_dataset(tiny_root, tmp_path, capsys, no_models):
    real = tmp_path / "real"
    before = _real_dataset(real)
    argv = ["generate-dataset", "--weights", str(tiny_root), "--out", str(real), "--count", "1", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has no column(s) Source" in err and "--append-to-existing" in err
    assert _tree(real) == before  # nothing written, nothing removed (NOT_LISTED.avi included)


def test_appending_to_a_real_dataset_keeps_the_original_and_marks_every_row(tmp_path):
    real = tmp_path / "real"
    before = _real_dataset(real)
    frames = np.full((4, 16, 16), 90, np.uint8)
    with pytest.raises(EchoNetFormatError, match="has no column"):
        append_synthetic(real, frames, 32.0, 50.0, "TRAIN", {"Seed": 1})
    assert _tree(real) == before
    rec, written = append_synthetic(real, frames, 32.0, 50.0, "TRAIN", {"Seed": 1, "Generation": "g1"},
                                    add_missing_columns=True)
    assert written and rec.extra["Source"] == "EchoFlow"
    assert (real / "FileList.original.csv").read_bytes() == before["FileList.csv"]
    rows = read_filelist(real)
    assert [r.file_name for r in rows] == ["0X1A", "0X1B", rec.file_name]
    assert [r.extra["Source"] for r in rows] == ["", "", "EchoFlow"]  # the real rows stay unmarked
    for name in ("0X1A", "0X1B", "NOT_LISTED"):  # user videos untouched
        assert (real / "Videos" / f"{name}.avi").read_bytes() == before[f"Videos/{name}.avi"]
    # the same generation is never written twice, whatever the name: same key, or byte-identical frames
    other_frames = np.full((4, 16, 16), 91, np.uint8)
    again, written = append_synthetic(real, other_frames, 32.0, 50.0, "TRAIN", {"Seed": 1, "Generation": "g1"})
    assert not written and again.file_name == rec.file_name and len(read_filelist(real)) == 3
    same_frames, written = append_synthetic(real, frames, 32.0, 50.0, "TRAIN", {"Seed": 2, "Generation": "g2"})
    assert not written and same_frames.file_name == rec.file_name
    other, written = append_synthetic(real, other_frames, 32.0, 51.0, "TRAIN", {"Seed": 1, "Generation": "g3"})
    assert written and other.file_name != rec.file_name and len(read_filelist(real)) == 4


def test_generate_dataset_rows_record_seed_tau_and_weights(tiny_root, tmp_path):
    out = tmp_path / "ds"
    argv = ["generate-dataset", "--weights", str(tiny_root), "--out", str(out), "--count", "2", "--image-steps", "1",
            "--video-steps", "1", "--batch-size", "2", "--quiet", "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    rows = read_filelist(out)
    assert len(rows) == 2
    for row in rows:
        assert row.extra["Seed"] == row.extra["VideoSeed"] == str(int(row.file_name.split("_")[1]))
        assert row.extra["Weights"] == "lifm/tiny+lvfm/tiny" and float(row.extra["Tau"]) == pytest.approx(0.9997)
        assert row.extra["Source"] == "EchoFlow" and float(row.extra["MaxSimilarity"]) < 0.9997
    # a second run under another prefix finds the same generations and writes nothing new
    assert main([*argv, "--prefix", "other"]) == 0
    assert len(read_filelist(out)) == 2 and len(list((out / "Videos").glob("*.avi"))) == 2


# -------------------------------------------------------------------------------------------- library
def test_tau_decision_rule():
    assert decide_tau(None, None).tau == 0.9997 and decide_tau(None, None).calibrated_source == "release default"
    d = decide_tau(None, 0.979)
    assert d.tau == 0.979 and d.chosen_by == "calibrated" and not d.looser
    assert decide_tau(0.95, 0.979).chosen_by == "user (stricter)"
    with pytest.raises(GateConfigError, match="looser than these weights' calibrated tau 0.979"):
        decide_tau(0.9997, 0.979)
    loose = decide_tau(0.9997, 0.979, allow_looser=True)
    assert loose.looser and loose.to_dict()["looser_than_calibrated"] is True and "LOOSER" in loose.describe()
    for bad in (0, -0.1, 1.0001, float("nan"), float("inf"), "0.9", True, None.__class__):
        with pytest.raises(GateConfigError):
            decide_tau(bad, 0.979)


@pytest.mark.parametrize("entry, message", [
    ('{"A4C": {"reid": "r", "banks": ["b.pt"], "tau": 0}}', r"A4C\.tau must be in \(0, 1\]"),
    ('{"A4C": {"reid": "r", "banks": ["b.pt"], "tau": "0.97"}}', r"A4C\.tau must be a number"),
    ('{"A4C": {"reid": "r", "banks": []}}', r"A4C\.banks must be a non-empty list"),
    ('{"A4C": {"banks": ["b.pt"]}}', r"A4C\.reid is missing"),
    ('{"A4C": {"reid": "../r", "banks": ["b.pt"]}}', r"A4C\.reid must be a folder or file name"),
    ('{"A4C": {"reid": "r", "banks": ["b.pt"], "latent_shape": [4, 28]}}', r"A4C\.latent_shape must be \[C, h, w\]"),
    ('{"A4C": {"reid": "r", "banks": ["b.pt"], "taux": 0.9}}', r"unknown field\(s\) taux"),
    ('{"A4C": {"reid": "r", "banks": ["b.pt"],}', "not valid JSON"),
])
def test_a_bad_gates_json_names_the_file_and_the_field(tmp_path, entry, message):
    (tmp_path / "gates.json").write_text(entry)
    with pytest.raises(GateConfigError, match=message) as info:
        gate_spec(tmp_path, "A4C")
    assert str(tmp_path / "gates.json") in str(info.value)


@pytest.fixture
def tiny_gate(tiny_root):
    return load_gate(gate_spec(tiny_root, "A4C"))


@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (1, 4, 7, 7), (1, 4, 1, 1), (1, 3, 28, 28), (4, 28, 28)])
def test_the_gate_refuses_latents_it_cannot_judge(tiny_gate, shape):
    with pytest.raises(ValueError, match=r"judges latent images \[B, 4, 28, 28\].*cannot judge"):
        tiny_gate.check(torch.zeros(shape))


def test_the_gate_refuses_banks_and_models_that_disagree(tiny_gate, tiny_root):
    reid, bank = tiny_gate.reid, tiny_gate.bank
    with pytest.raises(ValueError, match=r"values span .* sigmoid ReID embeddings in \[0, 1\]"):
        PrivacyGate(reid, bank * 3 - 1, latent_shape=(4, 28, 28))
    with pytest.raises(ValueError, match="latent_shape must be"):
        PrivacyGate(reid, bank, latent_shape=(16, 28, 28))
    with pytest.raises(GateConfigError, match='add "latent_shape"'):
        bank_latent_shape(reid, "tiny")  # no name rule, nothing declared: refused, not guessed
    assert bank_latent_shape(reid, "dynamic-4f4") == (4, 28, 28)  # the release's naming
    with pytest.raises(GateConfigError, match="same release"):
        bank_latent_shape(reid, "lvh-16f8")


def test_the_gate_report_names_no_absolute_path(tiny_gate, tiny_root):
    report = tiny_gate.check(torch.zeros(1, 4, 28, 28)).to_dict()
    assert report["reid"] == "reid/tiny" and report["banks"] == ["assets/anatomies_tiny.pt"]
    assert str(tiny_root) not in json.dumps(report)
    assert report["calibrated_source"] == "release default" and report["tau_chosen_by"] == "calibrated"


def test_library_argument_checks(tiny_root):
    pipe = EchoFlowPipeline.from_folder(tiny_root, device="cpu")
    cases = [
        (lambda: pipe.generate(max_tries=0), "max_tries must be a whole number"),
        (lambda: pipe.generate(seed=2**64), "seed must be in"),
        (lambda: pipe.generate(ef=120), "EF must be a percentage"),
        (lambda: pipe.generate(view="A2C"), "unknown view"),
        (lambda: pipe.sample_images("A4C", steps=0), "steps must be a whole number"),
        (lambda: pipe.sample_images("A4C", solver="rk4"), "unknown solver"),
        (lambda: pipe.sample_images("A4C", batch_size=0), "batch_size must be"),
        (lambda: pipe.animate(torch.zeros(1, 4, 28, 28), ef=float("nan")), "EF must be a percentage"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(GateConfigError, match="looser than these weights' calibrated tau 0.9997"):
        EchoFlowPipeline.from_folder(tiny_root, device="cpu", tau=0.99999, views=["A4C"])
    loose = EchoFlowPipeline.from_folder(tiny_root, tau=0.99999, views=["A4C"], allow_looser_tau=True,
                                         load_generators=False)
    assert loose.gates["A4C"].check(torch.zeros(1, 4, 28, 28)).to_dict()["looser_than_calibrated"] is True


def test_a_colour_mask_is_one_mask():
    rgb = np.zeros((112, 112, 3), np.uint8)
    rgb[30:80, 40:70] = (255, 255, 255)
    mask = preprocess_mask(rgb, 28)
    assert mask.shape == (1, 1, 28, 28) and 0 < mask.sum() < 28 * 28
    assert torch.equal(mask, preprocess_mask(rgb[..., 0], 28))
    batch = preprocess_mask(np.stack([rgb, rgb]), 28)
    assert batch.shape == (2, 1, 28, 28)


def test_non_finite_weights_are_refused_at_load_naming_file_and_tensor(tiny_root, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "lvfm"
    shutil.copytree(tiny_root / "lvfm" / "tiny", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[3]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=f"{weights}.*NaN or inf.*{key}"):
        load_model(folder)


def test_nan_outputs_are_errors_not_files(tiny_root, monkeypatch):
    pipe = EchoFlowPipeline.from_folder(tiny_root, device="cpu")
    with torch.no_grad():
        next(pipe.lifm.parameters()).fill_(float("nan"))
    with pytest.raises(GenerationError, match="image flow model .* NaN or inf"):
        pipe.generate(image_steps=1, video_steps=1)  # not "the gate rejected 8 seeds"
    with pytest.raises(GenerationError, match="NaN or inf"):
        pipe.decode(torch.full((1, 4, 2, 28, 28), float("nan")))
    monkeypatch.setattr(pipe.vae, "decode", lambda z: torch.zeros(z.shape[0], 3, 112, 112))
    with pytest.raises(GenerationError, match="blank"):
        pipe.decode(torch.zeros(1, 4, 2, 28, 28))


def test_a_pickled_asset_is_refused_without_suggesting_unsafe_loading(tmp_path):
    path = tmp_path / "scaling.pt"
    torch.save({"mean": torch.zeros(4), "std": np.ones(4)}, path)  # a numpy array: a pickled object
    with pytest.raises(CheckpointError) as info:
        load_tensor_asset(path)
    text = str(info.value)
    assert "refusing to load" in text and "weights_only" not in text and "safe_globals" not in text


def test_info_checks_assets_and_gates(tiny_root, tmp_path, capsys):
    import shutil

    assert main(["info", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "all values finite" in out and "privacy gate A4C: reid/tiny" in out and "[4, 28, 28]" in out
    broken = tmp_path / "root"
    shutil.copytree(tiny_root, broken)
    (broken / "gates.json").write_text('{"A4C": {"reid": "tiny", "banks": ["anatomies_tiny.pt"], "tau": 0}}')
    assert main(["info", str(broken)]) == 2
    assert "gates.json: A4C.tau must be in (0, 1]" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- sampling precision
def _constant_decay(model_dtype: torch.dtype):
    """dz/dt = z: the exact flow from t = 1 to 0 scales the noise by e^-1, whatever the step count."""

    def velocity(z, t):
        assert z.dtype == model_dtype and t.dtype == torch.float32
        return z

    return velocity


def test_bf16_models_integrate_on_a_float32_grid_and_state():
    noise = torch.randn(2, 4, 28, 28, generator=torch.Generator().manual_seed(0))
    fp32 = sample_flow(_constant_decay(torch.float32), noise, 500)
    bf16 = sample_flow(_constant_decay(torch.bfloat16), noise.bfloat16(), 500)
    assert fp32.dtype == bf16.dtype == torch.float32
    exact = noise * math.exp(-1)
    # Euler's own error at 500 steps is about 1e-3 of the value; a bf16 grid and state were off by ~10 %.
    assert (fp32 - exact).abs().max() < 2e-3
    assert (bf16 - fp32).pow(2).mean().sqrt() < 5e-3


def test_bf16_lifm_at_500_steps_matches_fp32(tiny_root):
    pipe = EchoFlowPipeline.from_folder(tiny_root, device="cpu", load_generators=True, views=["A4C"])
    fp32 = pipe.sample_images("A4C", steps=500, seed=1)
    pipe_bf16 = EchoFlowPipeline(pipe.vae, pipe.scaler, pipe.lifm, None, pipe.gates, "cpu", torch.bfloat16)
    bf16 = pipe_bf16.sample_images("A4C", steps=500, seed=1)
    rms = (bf16 - fp32).pow(2).mean().sqrt().item()
    assert rms < 0.05 * fp32.pow(2).mean().sqrt().item()


def test_multi_evaluation_solvers_survive_reused_output_buffers():
    """Heun/midpoint read the first evaluation after the second: with CUDA graphs or torch.compile's
    reduce-overhead, both return the same buffer. The sampler must copy, so the results cannot differ."""
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    buffer = torch.empty_like(noise)

    def reusing(z, t):
        buffer.copy_(-z * (1 + t.view(-1, 1, 1, 1)))
        return buffer

    def fresh(z, t):
        return -z * (1 + t.view(-1, 1, 1, 1))

    for solver in ("heun", "midpoint"):
        assert torch.equal(sample_flow(reusing, noise, 7, solver), sample_flow(fresh, noise, 7, solver))


# -------------------------------------------------------------------------------------------- nodes
@pytest.fixture(scope="module")
def M():
    return headless.load_pack(ROOT).NODE_CLASS_MAPPINGS


@pytest.fixture
def comfy_env(tiny_root, tmp_path, monkeypatch):
    import sys

    bridge = sys.modules[headless.PACK_NAME + ".nodes.bridge"]
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", str(tiny_root))
    monkeypatch.delenv("ECHOFLOW_WEIGHTS", raising=False)
    bridge.set_output_directory(tmp_path / "out")
    yield tmp_path / "out"
    bridge.set_output_directory(None)


def test_gate_loader_defaults_to_the_calibrated_tau(M, comfy_env, tiny_root, monkeypatch):
    spec = M["EchoFlowLoadPrivacyGate"].INPUT_TYPES()["required"]
    assert spec["tau"][1]["default"] == 0.0 and spec["allow_looser_tau"][1]["default"] is False
    loader = M["EchoFlowLoadPrivacyGate"]()
    out = loader.load("reid/tiny", "A4C", "auto", 0.0, "pearson")
    gate = out["result"][0]
    assert gate.extra["tau"] == 0.9997 and "calibrated, release default" in out["ui"]["text"][0]
    # the demo's own calibration, through the node
    demo = loader.load("demo", "A4C", "auto", 0.0, "pearson")
    calibrated = read_gates_manifest(ROOT / "echoflow_models" / "weights" / "phantom")["A4C"]["tau"]
    assert demo["result"][0].extra["tau"] == pytest.approx(calibrated)
    assert "gates.json" in demo["ui"]["text"][0]
    with pytest.raises(ValueError, match="looser than these weights' calibrated tau.*allow_looser_tau"):
        loader.load("demo", "A4C", "auto", 0.9997, "pearson")
    loose = loader.load("demo", "A4C", "auto", 0.9997, "pearson", allow_looser_tau=True)["result"][0]
    assert loose.extra["tau_decision"]["tau_chosen_by"] == "user (LOOSER, opted in)"
    for bad in ("0.9", float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match="tau must be"):
            loader.load("demo", "A4C", "auto", bad, "pearson")


def test_gate_node_refuses_latents_of_another_shape(M, comfy_env):
    gate = M["EchoFlowLoadPrivacyGate"]().load("demo", "A4C", "auto", 0.0, "pearson")["result"][0]
    node = M["EchoFlowPrivacyGate"]()
    for shape in ((1, 4, 64, 64), (1, 4, 7, 7), (1, 4, 1, 1)):
        with pytest.raises(ValueError, match=r"judges latent images \[B, 4, 28, 28\]"):
            node.check(gate, {"samples": torch.zeros(shape), "view": "A4C"})
    with pytest.raises(RuntimeError, match="NaN or inf"):
        node.check(gate, {"samples": torch.full((1, 4, 28, 28), float("nan")), "view": "A4C"})


def test_shipped_workflows_gate_at_the_calibrated_tau():
    for path in sorted((ROOT / "workflows").rglob("*.json")):
        data = json.loads(path.read_text())
        if "nodes" in data:
            gates = [n["widgets_values"] for n in data["nodes"] if n["type"] == "EchoFlowLoadPrivacyGate"]
            taus = [(v[3], v[4]) for v in gates]
        else:
            taus = [(n["inputs"]["tau"], n["inputs"]["allow_looser_tau"]) for n in data.values()
                    if n["class_type"] == "EchoFlowLoadPrivacyGate"]
        assert taus and all(t == (0.0, False) for t in taus), (path.name, taus)


def test_requeued_dataset_workflow_adds_no_duplicates(M, comfy_env, tiny_root):
    prompt = json.loads((ROOT / "workflows" / "api" / "echoflow_dataset_batch.json").read_text())
    sets = ["*.steps=1", "EchoFlowLoadVAE.vae_name=vae/tiny", "EchoFlowLoadImageFlow.model_name=lifm/tiny",
            "EchoFlowLoadVideoFlow.model_name=lvfm/tiny", "EchoFlowLoadPrivacyGate.reid_name=reid/tiny",
            "EchoFlowSampleImage.batch_size=2"]
    prompt = headless.apply_overrides(prompt, sets)
    for _ in range(2):  # queue the same prompt twice: same seeds, same EF
        headless.run_prompt(prompt, output_dir=comfy_env, log=None)
    folder = comfy_env / "echoflow" / "echonet_synthetic"
    rows = read_filelist(folder)
    assert 1 <= len(rows) <= 2 and len(list((folder / "Videos").glob("*.avi"))) == len(rows)
    assert all(r.extra["Seed"] and r.extra["VideoSeed"] and r.extra["Weights"] == "lifm/tiny+lvfm/tiny"
               for r in rows)
    assert all(float(r.extra["Tau"]) == pytest.approx(0.9997) for r in rows)
    # a new seed is a new generation
    headless.run_prompt(headless.apply_overrides(prompt, ["*.seed=5000"]), output_dir=comfy_env, log=None)
    assert len(read_filelist(folder)) > len(rows)


def test_writer_journal_is_the_only_licence_to_delete(tmp_path):
    frames = np.full((4, 16, 16), 80, np.uint8)
    with echonet.EchoNetWriter(tmp_path, ("Seed",), codec="ffv1") as w:
        w.add("A", frames, 30, ef=50, esv=1, edv=2, split="TRAIN", extra={"Seed": "1"})
    assert (tmp_path / echonet.JOURNAL_NAME).read_text() == ""  # cleared once A's row is written
    user = tmp_path / "Videos" / "B.avi"
    user.write_bytes(b"a user's file")
    with echonet.EchoNetWriter(tmp_path, ("Seed",)) as w:
        assert w.foreign_files == [user] and w.removed_orphans == []
    assert user.read_bytes() == b"a user's file" and os.path.getsize(tmp_path / echonet.JOURNAL_NAME) == 0


def test_a_model_folder_that_cannot_be_listed_is_reported(M, comfy_env, tiny_root, tmp_path, monkeypatch, caplog):
    import sys

    extra = tmp_path / "root"
    (extra / "lifm" / "noclass").mkdir(parents=True)
    (extra / "lifm" / "noclass" / "config.json").write_text('{"sample_size": 28}')
    (extra / "vae" / "other").mkdir(parents=True)
    (extra / "vae" / "other" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", f"{tiny_root}{os.pathsep}{extra}")
    bridge = sys.modules[headless.PACK_NAME + ".nodes.bridge"]
    with caplog.at_level("WARNING", logger="echoflow"):
        names = M["EchoFlowLoadImageFlow"].INPUT_TYPES()["required"]["model_name"][0]
    assert "lifm/tiny" in names and "lifm/noclass" not in names
    reasons = {folder.name: why for folder, why in bridge.unlisted_model_folders()}
    assert "_class_name" in reasons["noclass"] and "UNet2DConditionModel" in reasons["other"]
    assert "noclass" in caplog.text and "not listed" in caplog.text


def test_activation_estimates_scale_with_the_work(tiny_root):
    from echoflow_models.memory import activation_bytes

    demo = ROOT / "echoflow_models" / "weights" / "phantom"
    for kind, name in (("lifm", "phantom-dit"), ("lvfm", "phantom-stdit"), ("vae", "phantom-4f4"), ("reid", "phantom-4f4"),
                       ("ef", "phantom-r3d")):
        model = load_model(demo / kind / name)
        one = activation_bytes(model, 1)
        assert one > 0 and activation_bytes(model, 8) == pytest.approx(8 * one, rel=1e-6)
        assert activation_bytes(model, 1, torch.bfloat16) == pytest.approx(one / 2, rel=1e-6)
    # the released STDiT-S/2 at 64 frames needs far more than the demo's
    from echoflow_models.lvfm import RELEASE_LAYOUT, SIZE_PRESETS, DiffuserSTDiT, STDiTConfig

    released = DiffuserSTDiT(STDiTConfig(**{**RELEASE_LAYOUT, **SIZE_PRESETS["STDiT-S/2"], "depth": 1}))
    demo_lvfm = load_model(demo / "lvfm" / "phantom-stdit")
    assert activation_bytes(released, 1) > 10 * activation_bytes(demo_lvfm, 1)
    with pytest.raises(ValueError, match="no activation-memory estimate"):
        activation_bytes(torch.nn.Linear(2, 2), 1)


# ------------------------------------------------------------------------ found by the adversarial review
def _dataset_argv(tiny_root, out, *extra):
    return ["generate-dataset", "--weights", str(tiny_root), "--out", str(out), "--image-steps", "1", "--video-steps",
            "1", "--batch-size", "2", "--quiet", "--device", "cpu", "--threads", "1", *extra]


def test_other_settings_are_other_generations_not_duplicates(tiny_root, tmp_path):
    out = tmp_path / "ds"
    assert main(_dataset_argv(tiny_root, out, "--count", "2")) == 0
    assert main(_dataset_argv(tiny_root, out, "--count", "2", "--view", "PSAX", "--prefix", "psax")) == 0
    rows = read_filelist(out)
    assert len(rows) == 4 and sorted(r.extra["View"] for r in rows) == ["A4C", "A4C", "PSAX", "PSAX"]
    assert len({r.extra["Generation"] for r in rows}) == 4


def test_a_user_file_with_a_name_the_run_needs_is_refused_up_front(tiny_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ds"
    assert main(_dataset_argv(tiny_root, out, "--count", "1")) == 0
    (out / "Videos" / "synth_0000002.avi").write_bytes(b"mine")
    before = _tree(out)
    monkeypatch.setattr(EchoFlowPipeline, "from_folder", lambda *a, **k: pytest.fail("models loaded"))
    assert main(_dataset_argv(tiny_root, out, "--count", "3")) == 2
    assert "synth_0000002.avi" in capsys.readouterr().err and _tree(out) == before


def test_dataset_device_and_links_are_checked_before_anything_is_created(tiny_root, tmp_path, capsys):
    out = tmp_path / "ds"
    if not torch.cuda.is_available():
        argv = ["generate-dataset", "--weights", str(tiny_root), "--out", str(out), "--count", "1", "--device", "cuda"]
        assert main(argv) == 2
        assert "--device cuda" in capsys.readouterr().err and not out.exists()
    link = tmp_path / "dangling.mp4"
    link.symlink_to(tmp_path / "nowhere.mp4")
    assert main(["generate", "--weights", str(tiny_root), "--out", str(link), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err and link.is_symlink() and not (tmp_path / "nowhere.mp4").exists()


def test_append_to_a_real_dataset_changes_nothing_when_the_models_fail(tiny_root, tmp_path, capsys):
    import shutil

    real = tmp_path / "real"
    before = _real_dataset(real)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_root, broken)
    (broken / "assets" / "scaling.pt").unlink()
    assert main(_dataset_argv(broken, real, "--count", "1", "--append-to-existing")) == 2
    assert _tree(real) == before


def test_a_journalled_name_never_deletes_a_user_file_of_another_case(tmp_path):
    frames = np.full((4, 16, 16), 80, np.uint8)
    (tmp_path / "Videos").mkdir()
    (tmp_path / "Videos" / "A.AVI").write_bytes(b"a user's file")
    (tmp_path / echonet.JOURNAL_NAME).write_text("A\n")  # an interrupted write of ours named A
    with echonet.EchoNetWriter(tmp_path, ("Seed",), codec="ffv1") as w:
        assert w.removed_orphans == [] and [p.name for p in w.foreign_files] == ["A.AVI"]
        w.add("B", frames, 30, ef=50, esv=1, edv=2, split="TRAIN", extra={"Seed": "1"})
    assert (tmp_path / "Videos" / "A.AVI").read_bytes() == b"a user's file"


def test_small_print_of_the_gate(tiny_root, tmp_path, capsys):
    import shutil

    assert decide_tau(0.979138, 0.9791376051789112).tau == pytest.approx(0.9791376051789112)  # as printed
    assert decide_tau(np.float32(0.5), 0.979).tau == pytest.approx(0.5)
    (tmp_path / "gates.json").write_text('{"A4C": {"reid": "r", "banks": ["b.pt"]}, "A4C": {"reid": "r", "banks": '
                                         '["b.pt"], "tau": 1.0}}')
    with pytest.raises(GateConfigError, match="A4C appear"):
        gate_spec(tmp_path, "A4C")
    gate = load_gate(gate_spec(tiny_root, "A4C"))
    with pytest.raises(ValueError, match="constant"):
        PrivacyGate(gate.reid, torch.cat([gate.bank, torch.full((1, 128), 0.5)]), latent_shape=(4, 28, 28))
    for bad in (torch.zeros(1, 4, 28, 28, dtype=torch.int64), torch.zeros(1, 4, 28, 28, dtype=torch.complex64)):
        with pytest.raises(ValueError, match="floating-point"):
            gate.check(bad)
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    gates = json.loads((root / "gates.json").read_text())
    gates["A4C"]["latent_shape"] = [4, 14, 14]
    (root / "gates.json").write_text(json.dumps(gates))
    assert main(["info", str(root)]) == 2
    assert "judges latents [4, 14, 14] but lifm/tiny makes [4, 28, 28]" in capsys.readouterr().err
    with pytest.raises(GateConfigError, match=r"judges latents \[4, 14, 14\]"):
        EchoFlowPipeline.from_folder(root, views=["a4c"])
    (root / "assets" / "scaling.pt").unlink()
    gates["A4C"]["latent_shape"] = [4, 28, 28]
    (root / "gates.json").write_text(json.dumps(gates))
    assert main(["info", str(root)]) == 2 and "scaling.pt is missing" in capsys.readouterr().err


def test_masks_and_frames_that_guide_or_show_nothing_are_refused(M, comfy_env):
    with pytest.raises(ValueError, match="empty after preparation"):
        preprocess_mask(np.zeros((112, 112), np.uint8), 28)
    with pytest.raises(ValueError, match="full after preparation"):
        preprocess_mask(np.ones((28, 28), np.float32), 28)
    with pytest.raises(ValueError, match="NaN or inf"):
        M["EchoFlowSaveVideo"]().save(torch.full((2, 8, 8, 3), float("nan")), "x", 8.0, "mp4")
    assert not list(comfy_env.rglob("*.mp4"))


def test_a_released_reid_is_never_paired_with_the_demo_bank(M, comfy_env, tmp_path, monkeypatch, reid_tiny_dir):
    """A released-layout root (no gates.json) next to the bundled demo: 'auto' banks are the release's
    anatomies_dynamic/ped_a4c of that root, never the demo's phantom bank; missing ones are an error."""
    import shutil

    root = tmp_path / "rel"
    shutil.copytree(ROOT / "echoflow_models" / "weights" / "phantom" / "reid" / "phantom-4f4", root / "reid" / "dynamic-4f4")
    (root / "assets").mkdir()
    monkeypatch.setenv("ECHOFLOW_MODEL_PATH", str(root))
    loader = M["EchoFlowLoadPrivacyGate"]()
    with pytest.raises(FileNotFoundError, match="anatomies_dynamic.pt, anatomies_ped_a4c.pt not found"):
        loader.load("reid/dynamic-4f4", "A4C", "auto", 0.0, "pearson")
    bank = torch.sigmoid(torch.randn(5, 128, generator=torch.Generator().manual_seed(0)))
    torch.save(bank, root / "assets" / "anatomies_dynamic.pt")
    torch.save(bank[:3], root / "assets" / "anatomies_ped_a4c.pt")
    out = loader.load("reid/dynamic-4f4", "A4C", "auto", 0.0, "pearson")
    gate = out["result"][0]
    assert gate.extra["bank"].shape[0] == 8 and gate.extra["tau"] == 0.9997
    assert gate.extra["banks"] == ["assets/anatomies_dynamic.pt", "assets/anatomies_ped_a4c.pt"]
    assert "phantom" not in out["ui"]["text"][0]


def test_downloads_from_a_server_stay_inside_out(tmp_path):
    from headless.server import download_target

    assert download_target(tmp_path, "echoflow", "a.mp4") == (tmp_path / "echoflow" / "a.mp4").resolve()
    for sub, name in (("..", "a.mp4"), ("/etc", "x"), ("a/../..", "b")):
        with pytest.raises(headless.WorkflowError, match="outside --out"):
            download_target(tmp_path, sub, name)
    (tmp_path / "old.mp4").write_bytes(b"mine")
    with pytest.raises(headless.WorkflowError, match="exists already"):
        download_target(tmp_path, "", "old.mp4")


def test_threads_default_counts_only_the_cores_this_process_may_use(monkeypatch):
    import os

    from echoflow_models.options import physical_cores

    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert physical_cores() == 1


def test_save_video_refuses_the_output_folder_itself(M, comfy_env):
    with pytest.raises(ValueError, match="outside the output folder"):
        M["EchoFlowSaveVideo"]().save(torch.rand(2, 8, 8, 3), "x/..", 8.0, "mp4")
    assert not list(comfy_env.parent.glob("*.mp4"))
