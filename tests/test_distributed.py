"""Data-parallel training: 2 CPU processes (gloo) train a tiny LVFM to the same weights as 1 process with
the same global batch (gradient accumulation), and a checkpoint resumes with another world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from echoflow_models.train import train
from echoflow_models.train.latent_cache import SHARD_DIR, write_index, write_shard

REPO = Path(__file__).resolve().parents[1]
# a tiny LVFM; a constant learning rate so a run's schedule does not depend on --steps (the resume test)
LVFM = {"hidden": 16, "heads": 2, "depth": 1, "frames": 8, "batch_size": 2, "threads": 1, "quiet": True,
        "device": "cpu", "log_every": 1, "schedule": "constant", "warmup": 1}


def write_random_cache(out: Path, videos: int = 6, frames: int = 10) -> Path:
    """A latent cache of random latents (2 shards), without a VAE."""
    (out / SHARD_DIR).mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    rows = [{"file_names": f"v{i}", "splits": "TRAIN", "identities": f"p{i // 2}|A4C", "views": 0,
             "ef": 30.0 + 5 * i, "fps": 32.0, "lengths": frames} for i in range(videos)]
    half = videos // 2
    for k, part in enumerate((rows[:half], rows[half:])):
        n = frames * len(part)
        write_shard(out, k, part, {"mean": torch.randn(n, 4, 8, 8, generator=gen).half(), "std": None,
                                   "masks": torch.zeros(n, 8, 8, dtype=torch.bool),
                                   "has_mask": torch.zeros(n, dtype=torch.bool)})
    write_index(out, 2, "", False)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_args(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def run_ranks(world: int, options: dict) -> None:
    """`train lvfm` in `world` processes, with the environment torchrun gives each rank."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "echoflow_models", "train", "lvfm", *cli_args(options)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(str(folder / "training" / "state.pt"), weights_only=True)["models"]["model"]


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "training" / "log.jsonl").read_text().splitlines()]


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def test_two_gloo_processes_train_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    cache = write_random_cache(tmp_path / "cache")
    one, two, plain = tmp_path / "one", tmp_path / "two", tmp_path / "plain"
    train("lvfm", latents=str(cache), out=str(one), steps=2, global_batch=4, **LVFM)
    run_ranks(2, {"latents": cache, "out": two, "steps": 2, **LVFM})
    assert json.loads((two / "training" / "summary.json").read_text())["world_size"] == 2
    # rank r's micro-batch is slot r: what one process draws as its micro-batch r of 2
    assert max_weight_difference(one, two) < 1e-6
    assert losses(one) == pytest.approx(losses(two), rel=1e-6)
    # and it is not just any run: half the global batch trains other weights
    train("lvfm", latents=str(cache), out=str(plain), steps=2, **LVFM)
    assert max_weight_difference(one, plain) > 1e-4


@pytest.mark.slow
def test_torchrun_checkpoint_resumes_in_one_process_as_if_uninterrupted(tmp_path):
    """torchrun, 2 ranks, 2 steps; then 1 process resumes to 4 steps: the global batch (4) comes from the
    checkpoint (2 micro-batches), the slots' generators from its saved states."""
    cache = write_random_cache(tmp_path / "cache")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train("lvfm", latents=str(cache), out=str(straight), steps=4, global_batch=4, **LVFM)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "echoflow_models", "train", "lvfm", *cli_args({"latents": cache, "out": resumed, "steps": 2, **LVFM})]
    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    train("lvfm", latents=str(cache), out=str(resumed), steps=4, resume=True, **LVFM)
    assert max_weight_difference(straight, resumed) < 1e-6
    assert losses(straight) == pytest.approx(losses(resumed), rel=1e-6)
    summary = json.loads((resumed / "training" / "summary.json").read_text())
    assert summary["global_batch"] == 4 and summary["steps"] == 4


def test_a_global_batch_that_does_not_split_into_micro_batches_is_refused(tmp_path):
    cache = write_random_cache(tmp_path / "cache")
    with pytest.raises(SystemExit, match="--global-batch 5 is not a multiple of --batch-size 2"):
        train("lvfm", latents=str(cache), out=str(tmp_path / "o"), steps=1, global_batch=5, **LVFM)
    assert not (tmp_path / "o" / "training" / "state.pt").exists()


def test_a_resume_keeps_the_checkpoints_global_batch_or_says_why_not(tmp_path):
    """Every state records its global batch; resuming a one-process run (batch 2) on 2 processes of batch 2
    would double it, so it is refused with the reason instead of changing the optimisation silently."""
    from types import SimpleNamespace

    from echoflow_models.train.common import Run

    out = tmp_path / "run"
    train("lvfm", latents=str(write_random_cache(tmp_path / "cache")), out=str(out), steps=1, **LVFM)
    state = torch.load(out / "training" / "state.pt", weights_only=True)
    assert state["global_batch"] == 2 and state["world_size"] == 1
    two_ranks = SimpleNamespace(args=SimpleNamespace(batch_size=2), world=SimpleNamespace(size=2))
    with pytest.raises(SystemExit, match="the checkpoint's global batch 2"):
        Run._accumulation(two_ranks, 2, from_checkpoint=True)
    assert Run._accumulation(two_ranks, 8, from_checkpoint=True) == 2  # 2 x 2 processes x 2 micro-batches
