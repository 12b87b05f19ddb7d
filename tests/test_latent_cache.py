"""The sharded latent cache: resumable, split between ranks, read lazily, v1 caches converted or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from echoflow_models.scaling import LatentScaler
from echoflow_models.train import latent_cache
from echoflow_models.train.data import LatentSet, fit_scaling
from echoflow_models.train.distributed import World
from echoflow_models.train.latent_cache import (
    INDEX_NAME,
    SHARD_DIR,
    build_latent_cache,
    convert_v1_cache,
    load_latent_cache,
    shard_name,
)
from echoflow_models.vae import AutoencoderKL, AutoencoderKLConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from echoflow_models.echonet import write_phantom_dataset

    root = tmp_path_factory.mktemp("cache") / "ds"
    write_phantom_dataset(root, 6, seed=5, views=("A4C", "PSAX"), num_frames=4)  # 12 videos
    return root


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    cfg = AutoencoderKLConfig(down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                              block_out_channels=[8, 8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                              sample_size=112, mid_block_add_attention=False)
    return AutoencoderKL(cfg).eval()


def build(vae, dataset, out: Path, **kw):
    return build_latent_cache(vae, dataset, out, ("TRAIN", "VAL", "TEST"), shard_videos=3, **kw)


def frames_of(cache) -> torch.Tensor:
    return cache["mean"][:]


def test_an_interrupted_build_keeps_its_finished_shards_and_ends_equal(vae, dataset, tmp_path):
    whole = build(vae, dataset, tmp_path / "whole")
    assert len(whole["file_names"]) == 12 and len(list((tmp_path / "whole" / SHARD_DIR).iterdir())) == 4
    # an interruption after 2 shards: no index, a shard missing, a half-written temp file left behind
    out = tmp_path / "cut"
    build(vae, dataset, out)
    (out / INDEX_NAME).unlink()
    (out / SHARD_DIR / shard_name(2)).unlink()
    (out / SHARD_DIR / f"{shard_name(3)}.tmp-1").write_bytes(b"partial")
    with pytest.raises(SystemExit, match="not a finished latent cache.*run the same"):
        load_latent_cache(out)
    kept = {k: (out / SHARD_DIR / shard_name(k)).stat().st_mtime_ns for k in (0, 1, 3)}
    again = build(vae, dataset, out)
    assert {k: (out / SHARD_DIR / shard_name(k)).stat().st_mtime_ns for k in kept} == kept  # not re-encoded
    assert torch.equal(frames_of(again), frames_of(whole))
    assert again["file_names"] == whole["file_names"] and torch.equal(again["has_mask"], whole["has_mask"])


def test_ranks_encode_disjoint_shards_that_make_the_single_process_cache(vae, dataset, tmp_path, monkeypatch):
    """Ranks 0 and 1 of 2, one after the other (the collectives are no-ops without a process group)."""
    single = build(vae, dataset, tmp_path / "single")
    out = tmp_path / "ranks"

    def as_rank(rank: int) -> set[str]:
        monkeypatch.setattr(latent_cache, "current_world", lambda: World(rank, 2))
        before = set((out / SHARD_DIR).glob("*.safetensors")) if out.exists() else set()
        with pytest.raises(SystemExit, match="missing|not a finished"):  # the other rank's shards are not there
            build(vae, dataset, out)
        return {p.name for p in set((out / SHARD_DIR).glob("*.safetensors")) - before}

    assert as_rank(0) == {shard_name(0), shard_name(2)}
    assert as_rank(1) == {shard_name(1), shard_name(3)}
    monkeypatch.setattr(latent_cache, "current_world", lambda: World(0, 1))
    mtimes = sorted(p.stat().st_mtime_ns for p in (out / SHARD_DIR).iterdir())
    cache = build(vae, dataset, out)  # every shard exists: nothing is encoded again, the index is written
    assert sorted(p.stat().st_mtime_ns for p in (out / SHARD_DIR).iterdir()) == mtimes
    assert torch.equal(frames_of(cache), frames_of(single)) and cache["file_names"] == single["file_names"]


def test_the_set_reads_only_what_is_indexed_and_equals_the_in_memory_set(vae, dataset, tmp_path):
    build(vae, dataset, tmp_path / "c")
    cache = load_latent_cache(tmp_path / "c")
    lazy = LatentSet(cache, "TRAIN")
    assert not cache["mean"]._maps  # nothing mapped before a frame is read
    in_memory = {k: cache[k] for k in ("file_names", "splits", "identities", "views", "ef", "fps", "offsets",
                                       "has_mask")}
    in_memory.update(mean=cache["mean"][:], masks=cache["masks"][:], std=None)
    eager = LatentSet(in_memory, "TRAIN")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for a, b in zip(lazy.sample_images(5, g1), eager.sample_images(5, g2), strict=True):
        assert torch.equal(a, b)
    clip_a, clip_b = lazy.sample_clips(2, 4, g1), eager.sample_clips(2, 4, g2)
    assert torch.equal(clip_a.video, clip_b.video) and torch.equal(clip_a.cond, clip_b.cond)
    with pytest.raises(IndexError):
        lazy.mean[torch.tensor([lazy.num_frames])]


def test_scaling_fitted_in_chunks_equals_the_whole_fit(vae, dataset, tmp_path):
    cache = build(vae, dataset, tmp_path / "c")
    whole = LatentScaler.fit(LatentSet(cache, "TRAIN").mean[:].float())
    chunked = fit_scaling(cache, ("TRAIN",), chunk_frames=5)
    assert torch.allclose(chunked.mean, whole.mean, rtol=1e-6, atol=1e-7)
    assert torch.allclose(chunked.std, whole.std, rtol=1e-6)
    assert not torch.equal(whole.mean, torch.zeros(4))


def test_a_v1_cache_is_refused_with_the_command_that_converts_it(vae, dataset, tmp_path):
    cache = build(vae, dataset, tmp_path / "c")
    old = tmp_path / "latents.pt"
    v1 = {"format": "echoflow-latents-v1", "vae": "", "file_names": cache["file_names"], "splits": cache["splits"],
          "identities": cache["identities"], "views": cache["views"], "ef": cache["ef"], "fps": cache["fps"],
          "offsets": cache["offsets"], "mean": cache["mean"][:], "std": None, "masks": cache["masks"][:],
          "has_mask": cache["has_mask"]}
    torch.save(v1, str(old))
    with pytest.raises(SystemExit, match=r"v1 latent cache.*--convert .*latents\.pt --out"):
        load_latent_cache(old)
    converted = convert_v1_cache(old, tmp_path / "new", shard_videos=5)
    assert old.is_file()  # only read
    assert torch.equal(frames_of(converted), v1["mean"]) and converted["file_names"] == v1["file_names"]
    assert len(json.loads((tmp_path / "new" / INDEX_NAME).read_text())["shards"]) == 3


def test_out_folders_that_are_not_this_build_are_refused_before_encoding(vae, dataset, tmp_path):
    with pytest.raises(SystemExit, match="a folder of shards now"):
        build(vae, dataset, tmp_path / "latents.pt")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not a latent cache"):
        build(vae, dataset, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me" and not (foreign / SHARD_DIR).exists()
    build(vae, dataset, tmp_path / "c")
    with pytest.raises(SystemExit, match="other settings \\(with_std differ\\)"):
        build(vae, dataset, tmp_path / "c", with_std=True)


def test_a_build_resumed_with_other_vae_weights_in_the_same_folder_is_refused(vae, dataset, tmp_path):
    """A VAE retrained into the same folder must not finish a half-built cache of the old one."""
    out = tmp_path / "c"
    vae.source_folder = "/weights/vae/mine"
    build(vae, dataset, out)
    (out / INDEX_NAME).unlink()
    (out / SHARD_DIR / shard_name(3)).unlink()  # interrupted before the last shard
    other = AutoencoderKL(vae.config).eval()
    torch.manual_seed(123)
    for p in other.parameters():
        p.data.normal_()
    other.source_folder = "/weights/vae/mine"
    with pytest.raises(SystemExit):
        build(other, dataset, out)
    assert not (out / SHARD_DIR / shard_name(3)).exists() and not (out / INDEX_NAME).exists()


def test_reading_the_whole_cache_keeps_only_a_few_shards_mapped(vae, dataset, tmp_path, monkeypatch):
    """Mapped pages count in the process's memory until unmapped: reading every frame (the scaling fit, a
    long training run) must not leave every shard mapped, or memory grows with the cache."""
    monkeypatch.setattr(latent_cache, "MAX_MAPPED_SHARDS", 2)
    build(vae, dataset, tmp_path / "c")
    cache = load_latent_cache(tmp_path / "c")
    store = cache["mean"]
    whole = store[:]
    assert len(store.shards) == 4 and len(store._maps) == 2
    assert list(store._maps) == [2, 3]  # the most recently read
    torch.testing.assert_close(store[torch.arange(len(store))], whole)  # re-mapped shards read the same
