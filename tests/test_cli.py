"""The `echoflow` command end to end on the tiny reference checkpoints."""

from __future__ import annotations

import json

import pytest

from echoflow_models.cli import main
from echoflow_models.video_io import read_metadata, read_video


def test_generate_writes_a_decodable_mp4_and_reports_the_gate(tiny_root, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    summary = tmp_path / "summary.json"
    code = main(["generate", "--weights", str(tiny_root), "--view", "a4c", "--ef", "40", "--seed", "3",
                 "--image-steps", "2", "--video-steps", "2", "--out", str(out), "--device", "cpu",
                 "--json", str(summary), "--quiet", "--avi"])
    assert code == 0
    frames, fps = read_video(out)
    assert frames.shape == (8, 112, 112, 3) and fps == pytest.approx(32.0)
    assert out.with_suffix(".avi").is_file()
    printed = capsys.readouterr().out
    assert "privacy gate: PASS" in printed and "max similarity" in printed and "timings:" in printed
    meta = read_metadata(out)
    assert meta["ef"] == 40.0 and meta["privacy"]["items"][0]["passed"] is True
    assert json.loads(summary.read_text())["tries"] >= 1
    assert meta["weights"] == f"weights root '{tiny_root.name}'" and meta["lifm"] == "lifm/tiny"
    assert str(tiny_root) not in json.dumps(meta)  # no absolute path of the machine in the metadata
    # never overwrites silently
    before = out.read_bytes()
    assert main(["generate", "--weights", str(tiny_root), "--out", str(out), "--device", "cpu"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == before


def test_generate_fails_clearly_when_the_gate_rejects_everything(tiny_root, tmp_path, capsys):
    out = tmp_path / "never.mp4"
    code = main(["generate", "--weights", str(tiny_root), "--tau", "0.000001", "--max-tries", "2",
                 "--image-steps", "1", "--video-steps", "1", "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 3
    assert "rejected all 2 latent images" in capsys.readouterr().err
    assert not out.exists()


def test_missing_weights_get_a_clear_error(tiny_root, tmp_path, capsys):
    code = main(["generate", "--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y.mp4"),
                 "--device", "cpu"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_info_describes_every_model_under_a_root(tiny_root, capsys):
    assert main(["info", str(tiny_root)]) == 0
    text = capsys.readouterr().out
    for name in ("AutoencoderKL", "SegDiTTransformer2DModel", "DiffuserSTDiT", "ReID"):
        assert name in text
