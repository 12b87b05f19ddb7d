"""`generate-dataset` in batches and in per-rank shards: a batch equals single runs, the gate judges every
candidate before it is animated, resumes with another number of ranks neither lose nor duplicate a video,
and the merge assembles one FileList.csv without touching what it did not write."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echoflow_models import dataset_maker
from echoflow_models.dataset_shards import ShardWriter, merge_shards, read_shard_rows
from echoflow_models.echonet import EchoNetFormatError, read_filelist
from echoflow_models.pipeline import EchoFlowPipeline
from echoflow_models.synthetic_dataset import append_synthetic

# Batched matrix multiplies accumulate in another order than single ones (MKL picks its blocking by the
# batch's shape), so a batch equals single runs to float rounding, not bit for bit: measured 5e-7 on the tiny
# weights' latents (values up to 5) and 9e-6 on the demo weights', 1 grey level in decoded frames.
LATENT_ATOL = 1e-5


def world(gen, out, size: int, *extra, ranks=None):
    """Run every rank (or `ranks`) of a torchrun world of `size` one after the other; returns their results."""
    return [gen(out, *extra, env={"RANK": str(r), "WORLD_SIZE": str(size), "LOCAL_RANK": str(r)})
            for r in (range(size) if ranks is None else ranks)]


def identity(rows) -> list[tuple]:
    """What decides a row's video, whoever made it: name, seeds, EF, split and generation key."""
    return [(r.file_name, r.extra["Seed"], r.extra["VideoSeed"], r.ef, r.split, r.extra["Generation"]) for r in rows]


def test_a_batch_equals_single_runs_with_the_same_seeds(tiny_root):
    pipe = EchoFlowPipeline.from_folder(tiny_root, views=["A4C"])
    seeds, efs = [5, 9, 10, 10_000_030], [30.0, 40.0, 50.0, 60.0]
    images = pipe.sample_images("A4C", steps=2, seeds=seeds)
    singles = torch.cat([pipe.sample_images("A4C", steps=2, seed=s) for s in seeds])
    assert torch.allclose(images, singles, rtol=0, atol=LATENT_ATOL)
    # consecutive seeds: the explicit list and the classic (seed, batch_size) form draw the same noise
    assert torch.equal(pipe.sample_images("A4C", steps=2, seeds=[9, 10]), pipe.sample_images("A4C", steps=2, seed=9,
                                                                                           batch_size=2))
    batch_report, single_reports = pipe.check_privacy(images, "A4C"), [pipe.check_privacy(x[None], "A4C")
                                                                       for x in singles]
    assert [i.passed for i in batch_report.items] == [r.items[0].passed for r in single_reports]
    videos = pipe.animate(images, efs, steps=2, guidance=2.0, seeds=seeds)
    one_by_one = torch.cat([pipe.animate(images[i:i + 1], efs[i], steps=2, guidance=2.0, seed=s)
                            for i, s in enumerate(seeds)])
    assert torch.allclose(videos, one_by_one, rtol=0, atol=LATENT_ATOL)
    frames = pipe.decode(videos).int()
    assert (frames - torch.cat([pipe.decode(v[None]) for v in one_by_one]).int()).abs().max() <= 1
    with pytest.raises(ValueError, match="one seed per image"):
        pipe.animate(images, efs, steps=1, seeds=seeds[:3])


def test_the_batch_size_changes_no_name_seed_ef_or_generation(gen, tmp_path):
    made = {}
    for batch in ("1", "3"):
        code, _, err = gen(tmp_path / batch, "--count", "4", "--batch-size", batch)
        assert code == 0, err
        made[batch] = read_filelist(tmp_path / batch)
    assert identity(made["1"]) == identity(made["3"])
    assert [r.file_name for r in made["1"]] == [f"synth_{k:07d}" for k in range(4)]
    assert [r.extra["Seed"] for r in made["1"]] == ["0", "1", "2", "3"]  # video k: seed + k, as before


def test_the_gate_judges_every_candidate_before_it_is_animated(gen, tmp_path, monkeypatch):
    judged, animated = {}, []
    sample, check, animate = (EchoFlowPipeline.sample_images, EchoFlowPipeline.check_privacy,
                              EchoFlowPipeline.animate)
    last_seeds = []

    def sample_images(self, *args, seeds=None, **kwargs):
        last_seeds[:] = seeds
        return sample(self, *args, seeds=seeds, **kwargs)

    def check_privacy(self, latents, view):
        report = check(self, latents, view)
        for index, item in enumerate(report.items):  # reject every other candidate on top of the real verdict
            item.passed = item.passed and index % 2 == 0
            judged[last_seeds[index]] = item.passed
        return report

    def record_animate(self, latents, *args, seeds=None, **kwargs):
        animated.extend(seeds)
        return animate(self, latents, *args, seeds=seeds, **kwargs)

    monkeypatch.setattr(EchoFlowPipeline, "sample_images", sample_images)
    monkeypatch.setattr(EchoFlowPipeline, "check_privacy", check_privacy)
    monkeypatch.setattr(EchoFlowPipeline, "animate", record_animate)
    out = tmp_path / "ds"
    code, _, err = gen(out, "--count", "4", "--batch-size", "4")
    assert code == 0, err
    rejected = {s for s, ok in judged.items() if not ok}
    assert rejected and sorted(animated) == sorted(s for s, ok in judged.items() if ok)
    rows = read_filelist(out)
    assert len(rows) == 4 and not rejected & {int(r.extra["Seed"]) for r in rows}
    skipped = (out / "shards" / "synth.rank0.skipped.csv").read_text()
    assert all(f",{s},privacy," in skipped for s in rejected)
    # a rejected slot goes on with its next attempt: seed + slot + 10^7
    assert any(int(r.extra["Seed"]) >= dataset_maker.ATTEMPT_STRIDE for r in rows)


def test_a_resume_with_another_world_size_neither_loses_nor_duplicates(gen, tmp_path):
    out = tmp_path / "ds"
    # rank 0 of 2 finishes, rank 1 never runs (a lost node): slots 0, 2, 4 exist, no FileList yet
    [(code, _, err)] = world(gen, out, 2, "--count", "6", ranks=[0])
    assert code == 0, err
    assert not (out / "FileList.csv").exists()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "Videos").glob("*.avi")}
    assert sorted(first) == ["synth_0000000.avi", "synth_0000002.avi", "synth_0000004.avi"]
    # resumed with 3 ranks: only slots 1, 3, 5 are made; the last rank merges
    assert all(code == 0 for code, _, _ in world(gen, out, 3, "--count", "6"))
    rows = read_filelist(out)
    assert [r.file_name for r in rows] == [f"synth_{k:07d}" for k in range(6)]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "Videos").glob("*.avi") if p.name in first} == first
    # grown to 8 with 1 rank, then asked again with 2: exactly 8, every seed, key and frame hash once
    assert gen(out, "--count", "8")[0] == 0
    assert all(code == 0 for code, _, _ in world(gen, out, 2, "--count", "8"))
    rows = read_filelist(out)
    assert len(rows) == 8 == len(list((out / "Videos").glob("*.avi")))
    for column in ("Seed", "Generation", "ContentHash"):
        assert len({r.extra[column] for r in rows}) == 8, column
    single = tmp_path / "single"
    assert gen(single, "--count", "8")[0] == 0
    assert identity(read_filelist(single)) == identity(rows)  # the same dataset as one uninterrupted process


def test_an_interrupted_write_is_finished_by_the_slots_next_owner(gen, tmp_path, capsys):
    out = tmp_path / "ds"
    assert world(gen, out, 2, "--count", "2", ranks=[0])[0][0] == 0
    # rank 1 was killed after moving its video into place, halfway through its row
    shards = out / "shards"
    (out / "Videos" / "synth_0000001.avi").write_bytes(b"not a whole video")
    (shards / "synth.rank1.journal").write_text("synth_0000001\n")
    (shards / "synth.rank1.csv").write_text((shards / "synth.rank0.csv").read_text().splitlines()[0] + "\nsynth_00")
    # a user's file named like a slot, that no shard journals, stops the run before any model loads
    (out / "Videos" / "synth_0000002.avi").write_bytes(b"mine")
    code, _, err = gen(out, "--count", "3")
    assert code == 2 and "synth_0000002.avi" in err
    (out / "Videos" / "synth_0000002.avi").unlink()
    code, _, err = gen(out, "--count", "2")
    assert code == 0, err
    rows = read_filelist(out)
    assert [r.file_name for r in rows] == ["synth_0000000", "synth_0000001"]
    from echoflow_models.video_io import read_video

    assert read_video(out / "Videos" / "synth_0000001.avi")[0].shape[0] > 1  # replaced by the real video
    assert read_shard_rows(shards / "synth.rank1.csv") == []  # the half row is never read as a row


def test_merge_is_checked_idempotent_and_keeps_what_is_listed(gen, run_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in ((empty, "no shards to merge"), (tmp_path / "nowhere", "no such folder")):
        code, _, err = run_cli(["generate-dataset", "--merge", folder])
        assert code == 2 and message in err and "Traceback" not in err
    assert list(empty.iterdir()) == [] and not (tmp_path / "nowhere").exists()
    code, _, err = run_cli(["generate-dataset", "--out", tmp_path / "x"])
    assert code == 2 and "--count N and --out DIR are required" in err and not (tmp_path / "x").exists()

    out = tmp_path / "ds"
    node_row, _ = append_synthetic(out, np.full((4, 16, 16), 70, np.uint8), 32.0, 50.0, "TRAIN",
                                   {"Seed": 99, "Generation": "from-the-node"}, prefix="node")
    before = (out / "FileList.csv").read_bytes()
    assert gen(out, "--count", "2")[0] == 0
    merged = (out / "FileList.csv").read_bytes()
    assert merged.startswith(before)  # the rows that were there keep their bytes, the new ones follow
    assert [r.file_name for r in read_filelist(out)] == [node_row.file_name, "synth_0000000", "synth_0000001"]
    stamp = (out / "FileList.csv").stat().st_mtime_ns
    code, out_text, _ = run_cli(["generate-dataset", "--merge", out])
    assert code == 0 and "merged 0 new row(s)" in out_text
    assert (out / "FileList.csv").stat().st_mtime_ns == stamp and (out / "FileList.csv").read_bytes() == merged


def test_shard_writers_and_the_merge_on_their_own(tmp_path):
    frames = [np.full((4, 16, 16), v, np.uint8) for v in (60, 61, 62)]
    extra = {"View": "A4C", "Seed": 1, "Generation": "g1"}
    with ShardWriter(tmp_path, "a", 1) as one, ShardWriter(tmp_path, "a", 0) as zero:
        one.add("a_0000001", frames[1], 32.0, 41.0, "TRAIN", {**extra, "Seed": 2, "Generation": "g2"})
        zero.add("a_0000000", frames[0], 32.0, 40.0, "VAL", extra)
        with pytest.raises(Exception, match="another process is writing this shard"):
            ShardWriter(tmp_path, "a", 0)
    (tmp_path / "Videos" / "user.avi").write_bytes(b"a user's file")
    with ShardWriter(tmp_path, "b", 0) as other, pytest.raises(FileExistsError, match="left alone"):
        other.add("user", frames[2], 32.0, 40.0, "TRAIN", extra)
    with ShardWriter(tmp_path, "b", 0) as other:  # the same generation under another name: merged once only
        other.add("b_0000000", frames[2], 32.0, 40.0, "TRAIN", extra)
    result = merge_shards(tmp_path)
    assert result.added == ["a_0000000", "a_0000001"] and result.duplicates == [("b_0000000", "a_0000000")]
    assert [r.split for r in read_filelist(tmp_path)] == ["VAL", "TRAIN"]
    assert (tmp_path / "Videos" / "user.avi").read_bytes() == b"a user's file"


def test_shards_merge_into_a_real_dataset_only_when_opted_in(gen, tmp_path):
    real = tmp_path / "real"
    (real / "Videos").mkdir(parents=True)
    original = b"FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n0X1A,61.2,20.1,51.8,112,112,50,10,TRAIN\n"
    (real / "FileList.csv").write_bytes(original)
    (real / "Videos" / "0X1A.avi").write_bytes(b"real")
    code, _, err = gen(real, "--count", "2", "--append-to-existing")
    assert code == 0, err
    assert (real / "FileList.original.csv").read_bytes() == original
    rows = read_filelist(real)
    assert [r.file_name for r in rows] == ["0X1A", "synth_0000000", "synth_0000001"]
    assert [r.extra["Source"] for r in rows] == ["", "EchoFlow", "EchoFlow"]
    assert (real / "Videos" / "0X1A.avi").read_bytes() == b"real"
    (real / "FileList.csv").write_bytes(original)  # a folder whose FileList lacks our columns again
    with pytest.raises(EchoNetFormatError, match="has no column"):
        merge_shards(real)
    assert (real / "FileList.csv").read_bytes() == original


def test_the_default_batch_size(tiny_root, monkeypatch):
    from echoflow_models.memory import activation_bytes

    pipe = EchoFlowPipeline.from_folder(tiny_root, views=["A4C"])
    assert dataset_maker.auto_batch_size(pipe, 2.0, "cpu") == dataset_maker.CPU_BATCH_SIZE
    guided = activation_bytes(pipe.lvfm, 2)  # guidance runs two branches per candidate
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(10 * guided / 0.8) + 1, 0))
    assert dataset_maker.auto_batch_size(pipe, 2.0, "cuda") == 10
    assert dataset_maker.auto_batch_size(pipe, 1.0, "cuda") == 20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (guided // 2, 0))
    assert dataset_maker.auto_batch_size(pipe, 2.0, "cuda") == 1  # too little memory still runs, one at a time
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**15, 0))
    assert dataset_maker.auto_batch_size(pipe, 2.0, "cuda") == dataset_maker.MAX_AUTO_BATCH


def test_a_rank_that_finds_the_merge_under_way_exits_cleanly(gen, run_cli, tmp_path):
    """Two ranks finishing together: the one that finds the dataset locked leaves the merge to the holder
    (exit 0, its video safe in its shard); `--merge` afterwards lists it."""
    import fcntl

    out = tmp_path / "ds"
    assert gen(out, "--count", "2")[0] == 0  # FileList.csv exists, so a merge takes the writer's lock
    rank = {"WORLD_SIZE": "2"}
    assert gen(out, "--count", "4", env={**rank, "RANK": "0", "LOCAL_RANK": "0"})[0] == 0  # slot 3 still to come
    with open(out / ".echonet-writer.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # another rank merging right now
        code, _, err = gen(out, "--count", "4", env={**rank, "RANK": "1", "LOCAL_RANK": "1"})
    assert code == 0, err
    assert len(read_filelist(out)) == 2  # nothing merged under the other's lock
    code, _, err = run_cli(["generate-dataset", "--merge", out])
    assert code == 0, err
    assert [r.file_name for r in read_filelist(out)] == [f"synth_000000{i}" for i in range(4)]
