"""`python -m bench` at tiny sizes: it runs, checks outputs against the peer code, and writes valid JSON.

Also guards the inference-only optimisations the bench measures (fused QKV cache, in-place residuals,
CUDA-graph Euler loop): they must compute what the plain path computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import suite as bench
from bench.__main__ import main
from bench.suite import BenchSettings, plan, run_bench, table

REPO = Path(__file__).resolve().parents[1]


def diffusers_missing() -> str | None:
    peers, problem = bench.load_peers()
    return problem or peers.diffusers_problem()


def tiny(**kw) -> BenchSettings:
    base = dict(tiny=True, measure_steps=1, warmup_steps=1, rounds=2)
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
    assert all(c.frames == bench.QUICK_LVFM_FRAMES for c in quick if c.stage == "lvfm")
    assert all(c.decode_frames == bench.QUICK_VAE_FRAMES and c.frames == 64 for c in quick if c.stage == "vae")
    # every case warms up both paths and is timed in at least 5 alternating rounds
    assert all(c.warmup >= 1 and c.measure >= 1 and c.rounds >= 5 for c in quick)
    assert all(c.warmup >= 1 and c.rounds >= 3 for c in plan(BenchSettings()))
    assert all(c.rounds == 7 for c in plan(BenchSettings(quick=True, rounds=7)))
    with pytest.raises(ValueError, match="rounds"):
        plan(BenchSettings(quick=True, rounds=0))
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
    code = main(["--tiny", "--no-peer", "--quiet", "--json", str(out), "--measure-steps", "1",
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
        assert ours["memory"]["kind"].startswith("process_peak_rss") and ours["memory"]["peak_bytes"] > 0
        assert len(ours["rounds_s"]) == ours["rounds"] == 2 and ours["median_s"] == pytest.approx(
            sum(ours["rounds_s"]) / 2, abs=2e-6)
        assert "peer" not in r["impl"] and "--no-peer" in r["peer_skipped"]
        if r["case"]["stage"] in ("lifm", "lvfm"):
            assert ours["estimate_s"] == pytest.approx(ours["per_step_s"] * 50)
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "[bench]" not in printed  # --quiet: only the table
    assert "CPU: " in printed and f"torch {torch.__version__}" in printed  # the machine, under the table


def test_textbook_stdit_peer_is_checked_equal_before_timing():
    """The LVFM peer lives in bench/ and needs no extra package."""
    report = run_bench(tiny(stages=["lvfm"], batches=[2]), log=lambda _: None)
    assert len(report["results"]) == 2  # guidance off and on
    for r in report["results"]:
        assert r["check"]["passed"], r["check"]
        assert r["check"]["rel_diff"] < 1e-5
        assert r["speedup"] and r["speedup"] > 0
        assert r["impl"]["peer"]["checked_steps"] == 1
        for impl in r["impl"].values():  # one warm-up step, then one timed step in each of 2 rounds
            assert impl["rounds"] == 2 and len(impl["rounds_s"]) == 2 and impl["measured"] == 2
        ratios = [p / o for o, p in zip(r["impl"]["ours"]["rounds_s"], r["impl"]["peer"]["rounds_s"], strict=True)]
        assert r["speedup_spread"]["ratios"] == pytest.approx(ratios, rel=1e-3)
        assert r["speedup_spread"]["min"] <= r["speedup"] <= r["speedup_spread"]["max"]


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


def test_batched_reid_peer_agrees_with_the_gate():
    """The ReID peer embeds the whole batch at once against a bank prepared once, like a user would."""
    report = run_bench(tiny(stages=["reid"]), log=lambda _: None)
    (r,) = report["results"]
    assert r["check"]["passed"] and r["check"]["same_nearest"], r["check"]
    assert r["check"]["max_abs_diff"] <= bench.REID_TOLERANCE and r["speedup"] > 0


def test_rounds_alternate_and_the_speedup_is_the_median_of_round_ratios():
    impls = [("ours", None), ("peer", None)]
    assert [n for n, _ in bench.round_order(impls, 0)] == ["ours", "peer"]
    assert [n for n, _ in bench.round_order(impls, 1)] == ["peer", "ours"]
    assert [n for n, _ in bench.round_order(impls[:1], 1)] == ["ours"]
    # a disturbed round moves neither the median nor the other rounds' ratios
    record = {"impl": {"ours": {"rounds_s": [1.0, 1.0, 2.0, 1.0, 1.0]},
                       "peer": {"rounds_s": [1.2, 1.1, 9.0, 1.3, 1.2]}}}
    bench.finish(record, BenchSettings())
    spread = record["speedup_spread"]
    assert record["speedup"] == pytest.approx(1.2) and spread["rounds"] == 5
    assert spread["min"] == pytest.approx(1.1) and spread["max"] == pytest.approx(4.5)
    assert spread["q1"] == pytest.approx(1.2) and spread["q3"] == pytest.approx(1.3)
    assert "x1.20 (1.10-4.50, 5 rounds)" in bench._fmt_speedup(record)
    assert bench.ratio_spread([2.0]) == {"median": 2.0, "min": 2.0, "max": 2.0, "q1": 2.0, "q3": 2.0,
                                         "rounds": 1, "ratios": [2.0]}


def test_the_machine_is_described(monkeypatch):
    env = bench.environment(BenchSettings())
    assert env["threads"] == torch.get_num_threads() and env["torch_build"]["torch"] == torch.__version__
    assert env["cpu_flags"] is None or set(env["cpu_flags"]) <= set(bench.CPU_FLAGS)
    line = bench.machine_line(env, bench.versions())
    assert f"torch {torch.__version__}" in line and f"{torch.get_num_threads()} intra-op threads" in line
    assert ("no AMX" in line) == (env["cpu_flags"] is not None and not any(f.startswith("amx") for f in env["cpu_flags"]))
    assert "flags: unknown" in bench.machine_line({**env, "cpu_flags": None})
    fake = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon Test\nphysical id\t: 0\n"
            "core id\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\n"
            "processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon Test\nphysical id\t: 0\n"
            "core id\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: fake if str(self) == "/proc/cpuinfo"
                        else real_read(self, *a, **k))
    info = bench.cpuinfo()
    assert info == {"cpu": "Xeon Test", "vendor": "GenuineIntel", "physical_cores": 1,
                    "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}  # 2 threads, 1 core


def test_peer_skip_reason_when_bench_folder_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "nowhere")
    monkeypatch.delitem(__import__("sys").modules, "echoflow_bench_peers", raising=False)
    lines = []
    report = run_bench(tiny(stages=["reid"]), log=lines.append)
    assert "source checkout" in report["results"][0]["peer_skipped"]
    assert any("every peer skipped" in line and "source checkout" in line for line in lines)
    assert "PEER SKIPPED for reid ResNet18-4to128" in table(report)


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


def test_dataset_throughput_times_every_batch_size(tiny_root, capsys):
    from bench.dataset_throughput import main as throughput

    argv = ["--weights", str(tiny_root), "--batch-sizes", "1,2", "--candidates", "2", "--rounds", "2",
            "--image-steps", "1", "--video-steps", "1"]
    assert throughput(argv) == 0
    out, err = capsys.readouterr()
    assert err.count("s per candidate") == 4  # 2 rounds x 2 batch sizes, the order rotated
    assert "round 1 batch 2" in err.splitlines()[2]
    assert "batch 1: " in out and "batch 2: " in out and "vs batch 1" in out
