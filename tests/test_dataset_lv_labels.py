"""`generate-dataset --lv-labels`: every video gets its LV masks and EchoNet tracings, a run stopped between a
row and its labels is caught up on resume, and a missing or wrong model is refused before anything runs."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from echoflow_models import save_model
from echoflow_models.echonet import read_filelist
from echoflow_models.lvseg import LVSegConfig, LVSegNet


def _beating(frames) -> torch.Tensor:
    """Stand-in segmentation: an ellipse that shrinks and grows over a 0.8 s beat (the network's accuracy is
    not what this tests: tests/test_lv_ef.py and the evaluation measure that)."""
    t = len(frames)
    yy, xx = np.mgrid[:112, :112]
    out = []
    for i in range(t):
        scale = 1.0 - 0.25 * (1 - np.cos(2 * np.pi * i / 25.6)) / 2
        out.append(((yy - 56) / (30 * scale)) ** 2 + ((xx - 56) / (12 * scale)) ** 2 <= 1.0)
    return torch.from_numpy(np.stack(out))


@pytest.fixture
def seg_root(tiny_root, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(tiny_root, root)
    save_model(LVSegNet(LVSegConfig(channels=[8, 8])), root / "seg" / "tiny")
    return root


def test_every_video_gets_its_lv_labels(gen, seg_root, tmp_path, monkeypatch):
    monkeypatch.setattr(LVSegNet, "segment", lambda self, frames: _beating(frames))
    out = tmp_path / "ds"
    code, _, err = gen(out, "--count", "3", "--lv-labels", weights=seg_root)
    assert code == 0, err
    names = [r.file_name for r in read_filelist(out)]
    assert len(names) == 3
    for name in names:
        with np.load(out / "Masks" / f"{name}.npz") as data:
            assert data["masks"].shape[1:] == (112, 112) and data["has_mask"].all()
    with open(out / "VolumeTracings.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["FileName"] for r in rows} == {f"{n}.avi" for n in names}
    assert all(len({r["Frame"] for r in rows if r["FileName"] == f"{n}.avi"}) == 2 for n in names)  # ED and ES
    # a run stopped between a row and its labels: the next run writes them, and nothing else changes
    (out / "Masks" / f"{names[1]}.npz").unlink()
    before = (out / "FileList.csv").read_bytes()
    code, _, err = gen(out, "--count", "3", "--lv-labels", weights=seg_root)
    assert code == 0, err
    assert (out / "Masks" / f"{names[1]}.npz").is_file() and (out / "FileList.csv").read_bytes() == before
    with open(out / "VolumeTracings.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)  # its tracings were there already: not added twice


def test_slots_settled_as_duplicates_need_no_labels(gen, seg_root, tmp_path, monkeypatch):
    """A prefix whose slots repeat videos of another prefix has rows for none of them: nothing to label."""
    monkeypatch.setattr(LVSegNet, "segment", lambda self, frames: _beating(frames))
    out = tmp_path / "ds"
    assert gen(out, "--count", "2", "--prefix", "a", weights=seg_root)[0] == 0
    code, _, err = gen(out, "--count", "2", "--prefix", "b", weights=seg_root)
    assert code == 0, err
    for _ in range(2):  # and again, now with labels: the catch-up must not look for b's (absent) videos
        code, _, err = gen(out, "--count", "2", "--prefix", "b", "--lv-labels", weights=seg_root)
        assert code == 0, err
    assert [r.file_name for r in read_filelist(out)] == ["a_0000000", "a_0000001"]


def test_ranks_write_their_own_tracings_and_the_merge_folds_them(gen, seg_root, tmp_path, monkeypatch):
    monkeypatch.setattr(LVSegNet, "segment", lambda self, frames: _beating(frames))
    out = tmp_path / "ds"
    for rank in ("0", "1"):
        env = {"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank}
        code, _, err = gen(out, "--count", "4", "--lv-labels", weights=seg_root, env=env)
        assert code == 0, err
    shards = sorted(p.name for p in (out / "shards").glob("*.tracings.csv"))
    assert shards == ["synth.rank0.tracings.csv", "synth.rank1.tracings.csv"]
    with open(out / "VolumeTracings.csv", newline="") as fh:
        traced = {r["FileName"] for r in csv.DictReader(fh)}
    assert traced == {f"synth_000000{i}.avi" for i in range(4)}


def test_a_video_without_a_found_lv_keeps_its_row_and_gets_no_labels(gen, seg_root, tmp_path, monkeypatch):
    monkeypatch.setattr(LVSegNet, "segment", lambda self, frames: torch.zeros(len(frames), 112, 112, dtype=torch.bool))
    out = tmp_path / "ds"
    code, _, err = gen(out, "--count", "2", "--lv-labels", weights=seg_root)
    assert code == 0, err
    assert len(read_filelist(out)) == 2 and not (out / "Masks").exists()
    assert "2 video(s) got no LV labels" in err


def test_lv_labels_without_a_model_or_with_a_foreign_tracings_file_is_refused_first(gen, tiny_root, seg_root, tmp_path):
    out = tmp_path / "ds"
    code, _, err = gen(out, "--count", "1", "--lv-labels", weights=tiny_root)
    assert code == 2 and "--lv-labels needs an LV segmentation model" in err and not out.exists()
    code, _, err = gen(out, "--count", "1", "--seg", "tiny", weights=seg_root)
    assert code == 2 and "--seg" in err and not out.exists()
    out.mkdir()
    (out / "VolumeTracings.csv").write_text("Name,Points\nx,1\n")
    code, _, err = gen(out, "--count", "1", "--lv-labels", weights=seg_root)
    assert code == 2 and "VolumeTracings.csv" in err
    assert sorted(p.name for p in out.iterdir()) == ["VolumeTracings.csv"]
