"""`echoflow bench` at tiny sizes: it runs, checks outputs against the peer code, and writes valid JSON.

Also guards the inference-only optimisations the bench measures (fused QKV cache, in-place residuals,
CUDA-graph Euler loop): they must compute what the plain path computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from echoflow_models import bench
from echoflow_models.bench import BenchSettings, plan, run_bench, table
from echoflow_models.cli import main

REPO = Path(__file__).resolve().parents[1]


def diffusers_missing() -> str | None:
    peers, problem = bench.load_peers()
    return problem or peers.diffusers_problem()


def tiny(**kw) -> BenchSettings:
    base = dict(tiny=True, measure_steps=1, warmup_steps=1, repeats=1)
    base.update(kw)
    return BenchSettings(**base)


# ----------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------


def test_full_plan_covers_the_issue_grid():
    cases = plan(BenchSettings(device="cpu"))
    got = {(c.stage, c.model, c.batch, c.guidance) for c in cases}
    for model in ("DiT-S/2", "DiT-B/2"):
        for b in (1, 16):
            assert ("lifm", model, b, None) in got
    for model in ("STDiT-S/2", "STDiT-B/2"):
        for b in (1, 4):
            for g in (1.0, 2.0):
                assert ("lvfm", model, b, g) in got
    assert ("reid", "ResNet18-4to128", 64, None) in got
    assert {c.model for c in cases if c.stage == "vae"} == {"avae-4f4", "avae-16f8"}
    assert all(c.frames == 64 for c in cases if c.stage in ("lvfm", "vae"))


def test_quick_plan_is_small_and_cuda_plan_has_all_dtypes():
    quick = plan(BenchSettings(quick=True))
    assert {c.stage for c in quick} == set(bench.STAGES)
    assert {c.model for c in quick if c.stage == "lvfm"} == {"STDiT-S/2"}
    assert all(c.decode_frames == 16 for c in quick if c.stage == "vae")
    args = bench_parser().parse_args(["bench", "--device", "cuda"])
    assert bench.settings_from_args(args).dtypes == ["fp32", "bf16", "fp16"]


def bench_parser():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.add_subcommands(sub)
    return parser


# ----------------------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------------------


def test_cli_runs_every_stage_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--tiny", "--no-peer", "--quiet", "--json", str(out), "--measure-steps", "1",
                 "--warmup-steps", "0", "--batches", "1"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["schema"] == 1
    assert report["versions"]["torch"] == torch.__version__
    assert report["environment"]["device"] == "cpu"
    assert {r["case"]["stage"] for r in report["results"]} == set(bench.STAGES)
    for r in report["results"]:
        ours = r["impl"]["ours"]
        assert ours["median_s"] > 0 and ours["throughput"] > 0
        assert ours["memory"]["peak_bytes"] >= 0
        assert "peer" not in r["impl"] and "--no-peer" in r["peer_skipped"]
        if r["case"]["stage"] in ("lifm", "lvfm"):
            assert ours["estimate_s"] == pytest.approx(ours["per_step_s"] * 50)
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "[bench]" not in printed  # --quiet: only the table


def test_textbook_stdit_peer_is_checked_equal_before_timing():
    """The LVFM peer lives in bench/ and needs no extra package."""
    report = run_bench(tiny(stages=["lvfm"], batches=[2]), log=lambda _: None)
    assert len(report["results"]) == 2  # guidance off and on
    for r in report["results"]:
        assert r["check"]["passed"], r["check"]
        assert r["check"]["rel_diff"] < 1e-5
        assert r["speedup"] and r["speedup"] > 0
        assert r["impl"]["peer"]["checked_steps"] == 2


def test_mismatch_withholds_every_time(monkeypatch):
    monkeypatch.setitem(bench.TOLERANCE, "fp32", -1.0)  # nothing can pass
    report = run_bench(tiny(stages=["lvfm"], batches=[1], guidance=1.0), log=lambda _: None)
    record = report["results"][0]
    assert record["status"].startswith("MISMATCH") and record["speedup"] is None
    assert all(r["withheld"] for r in record["impl"].values())
    assert "withheld" in table(report)


@pytest.mark.slow
def test_diffusers_peers_agree_and_speedups_are_reported(tmp_path):
    reason = diffusers_missing()
    if reason:
        pytest.skip(f"peer part skipped: {reason}")
    report = run_bench(tiny(stages=["lifm", "reid", "vae"], batches=[2]), log=lambda _: None)
    assert [r["case"]["stage"] for r in report["results"]] == ["lifm", "reid", "vae"]
    for r in report["results"]:
        assert r["check"]["passed"], (r["label"], r["check"])
        assert r["speedup"] > 0
    assert report["versions"]["diffusers"]
    json.dumps(report)  # serialisable as it is


def test_peer_skip_reason_when_bench_folder_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "nowhere")
    monkeypatch.delitem(__import__("sys").modules, "echoflow_bench_peers", raising=False)
    report = run_bench(tiny(stages=["reid"]), log=lambda _: None)
    assert "source checkout" in report["results"][0]["peer_skipped"]


# ----------------------------------------------------------------------------------------------------
# The textbook STDiT and the optimised paths compute the reference's numbers
# ----------------------------------------------------------------------------------------------------


def test_textbook_stdit_reproduces_the_reference_goldens(fixtures_dir, golden):
    from echoflow_models import load_model

    peers, problem = bench.load_peers()
    assert problem is None
    ref = peers.load_reference_stdit()
    ours = load_model(fixtures_dir / "lvfm" / "tiny")
    textbook = ref.ReferenceSTDiT(ours.config)
    textbook.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        out = textbook.eval()(golden["lvfm.x"], golden["lvfm.t"], golden["lvfm.ef"], golden["lvfm.cond_image"])
        assert (out - golden["lvfm.out"]).abs().max() <= 1e-4
        drop = torch.ones(out.shape[0], dtype=torch.bool)
        null_ours = ours(golden["lvfm.x"], golden["lvfm.t"], golden["lvfm.ef"].reshape(-1),
                         golden["lvfm.cond_image"], drop_ef=drop)
        null_ref = textbook(golden["lvfm.x"], golden["lvfm.t"], golden["lvfm.ef"], golden["lvfm.cond_image"],
                            force_drop=True)
        assert (null_ours - null_ref).abs().max() <= 1e-5


def test_inference_path_equals_autograd_path():
    """In-place residuals/activations (no autograd) and the out-of-place training path agree."""
    lifm = bench.build_lifm("DiT-tiny")
    lvfm = bench.build_lvfm("STDiT-tiny", 8)
    vae = bench.build_vae("avae-tiny")
    x, t, view = torch.randn(2, 4, 28, 28), torch.tensor([0.3, 0.9]), torch.tensor([0, 2])
    video, cond, ef = torch.randn(2, 4, 8, 28, 28), torch.randn(2, 4, 28, 28), torch.tensor([0.4, 0.6])
    z = torch.randn(2, 4, 28, 28)
    with torch.inference_mode():
        fast = (lifm(x, t, view), lvfm(video, t, ef, cond), vae.decode(z))
    for module in (lifm, lvfm, vae):
        module.requires_grad_(True)
    with torch.enable_grad():
        plain = (lifm(x, t, view), lvfm(video, t, ef, cond), vae.decode(z))
    for a, b in zip(fast, plain, strict=True):
        assert b.requires_grad
        assert (a - b.detach()).abs().max() <= 1e-5


def test_fused_qkv_cache_follows_weight_updates():
    lifm = bench.build_lifm("DiT-tiny")
    x, t, view = torch.randn(1, 4, 28, 28), torch.tensor([0.5]), torch.tensor([1])
    with torch.no_grad():
        before = lifm(x, t, view)
        assert lifm.transformer_blocks[0].attn1._qkv_cache is not None
        state = {k: v * 1.1 if "to_k" in k else v for k, v in lifm.state_dict().items()}
        lifm.load_state_dict(state)
        after = lifm(x, t, view)
    lifm.requires_grad_(True)
    with torch.enable_grad():  # trainable weights: the three separate projections, no cache
        for block in lifm.transformer_blocks:
            block.attn1._qkv_cache = None
        reference = lifm(x, t, view).detach()
    assert (after - before).abs().max() > 1e-4
    assert (after - reference).abs().max() <= 1e-5


def test_cuda_graph_sampler_refuses_cpu_tensors():
    from echoflow_models.sampling import sample_flow_cuda_graph

    with pytest.raises(ValueError, match="CUDA"):
        sample_flow_cuda_graph(lambda z, t: z, torch.zeros(1, 4, 2, 2), steps=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_sampler_matches_eager_euler():
    from echoflow_models.sampling import sample_flow, sample_flow_cuda_graph

    lifm = bench.build_lifm("DiT-tiny").cuda()
    view = torch.zeros(2, dtype=torch.long, device="cuda")
    noise = torch.randn(2, 4, 28, 28, device="cuda")
    with torch.inference_mode():
        eager = sample_flow(lambda z, t: lifm(z, t, view), noise, steps=5)
        graphed = sample_flow_cuda_graph(lambda z, t: lifm(z, t, view), noise, steps=5)
    assert (eager - graphed).abs().max() <= 1e-4
