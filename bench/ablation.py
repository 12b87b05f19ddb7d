"""Measure each inference optimisation of the model core on its own (CPU, float32, one forward).

    python bench/ablation.py [--threads 1] [--repeats 3] [--base REV] [--json PATH]

Variants are timed interleaved (A B C A B C ...) so a shared machine's drifts hit all of them; the table
gives the median time and the speed-up over the unoptimised code of git revision `--base` (default: the
commit the optimisations were made on), whose model files are loaded from git into a scratch package.

* LIFM (DiT-S/2, 28x28): fused QKV (one cached [3D, D] projection) and in-place modulation/residuals/GELU.
* LVFM (STDiT-S/2, 64 frames): contiguous temporal tokens (2-D GEMMs) plus in-place updates; classifier-free
  guidance batched into one forward versus two forwards.
* A-VAE decode (avae-4f4, 16 frames): in-place SiLU/residuals; the decode chunk size.

The in-place paths are switched off by running the same module with autograd enabled (no weight requires
grad, so nothing is recorded): the code then takes its out-of-place branch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from echoflow_models import bench  # noqa: E402
from echoflow_models import lifm as lifm_module  # noqa: E402

DEFAULT_BASE = "bcd9280"


def load_base(rev: str, name: str):
    """echoflow_models/<name>.py at `rev`, importable on its own (relative imports made absolute)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:echoflow_models/{name}.py"],
                            check=True, capture_output=True, text=True).stdout
    source = source.replace("from .", "from echoflow_models.")
    path = Path(tempfile.mkdtemp()) / f"base_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"echoflow_base_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def interleaved(variants: dict, repeats: int) -> dict[str, list[float]]:
    times = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def no_fused_qkv():
    original = lifm_module.SelfAttention._fused_qkv

    class Ctx:
        def __enter__(self):
            lifm_module.SelfAttention._fused_qkv = lambda self: None

        def __exit__(self, *exc):
            lifm_module.SelfAttention._fused_qkv = original

    return Ctx()


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows: list[dict] = []

    def report(section: str, times: dict[str, list[float]], base: str):
        ref = statistics.median(times[base])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"section": section, "variant": name, "median_s": med, "min_s": min(ts),
                         "samples_s": ts, "speedup_vs_base": ref / med})
            print(f"{section:38s} {name:48s} {med:8.4f} s  x{ref / med:.3f}", flush=True)

    base_lifm, base_lvfm, base_vae = (load_base(args.base, n) for n in ("lifm", "lvfm", "vae"))

    # LIFM ------------------------------------------------------------------------------------------
    ours = bench.build_lifm("DiT-S/2")
    old = base_lifm.SegDiTTransformer2DModel(ours.config)
    old.load_state_dict(ours.state_dict())
    old.eval()
    for b in (1, 16):
        x, t = torch.randn(b, 4, 28, 28), torch.full((b,), 0.7)
        view = torch.zeros(b, dtype=torch.long)

        def fused_only(x=x, t=t, view=view):
            with torch.enable_grad():
                return ours(x, t, view)

        def inplace_only(x=x, t=t, view=view):
            with no_fused_qkv(), torch.no_grad():
                return ours(x, t, view)

        with torch.no_grad():
            times = interleaved({
                f"{args.base} (unoptimised)": lambda x=x, t=t, view=view: old(x, t, view),
                "+ fused QKV only": fused_only,
                "+ in-place modulation/residual/GELU only": inplace_only,
                "all (this tree)": lambda x=x, t=t, view=view: ours(x, t, view),
            }, args.repeats * (3 if b == 1 else 1))
        report(f"LIFM DiT-S/2 forward, batch {b}", times, f"{args.base} (unoptimised)")

    # LVFM ------------------------------------------------------------------------------------------
    lvfm = bench.build_lvfm("STDiT-S/2", 64)
    old = base_lvfm.DiffuserSTDiT(lvfm.config)
    old.load_state_dict(lvfm.state_dict())
    old.eval()
    x, t = torch.randn(1, 4, 64, 28, 28), torch.tensor([0.7])
    cond, ef = torch.randn(1, 4, 28, 28), torch.tensor([0.55])

    def out_of_place():
        with torch.enable_grad():
            return lvfm(x, t, ef, cond)

    with torch.no_grad():
        times = interleaved({
            f"{args.base} (unoptimised)": lambda: old(x, t, ef, cond),
            "+ contiguous temporal tokens only": out_of_place,
            "all (this tree)": lambda: lvfm(x, t, ef, cond),
        }, args.repeats)
    report("LVFM STDiT-S/2 forward, batch 1, 64 f", times, f"{args.base} (unoptimised)")

    drop = torch.tensor([False, True])
    x2, t2, ef2, cond2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([ef, ef]), torch.cat([cond, cond])
    with torch.no_grad():
        times = interleaved({
            "guidance: two forwards": lambda: (lvfm(x, t, ef, cond), lvfm(x, t, ef, cond, drop_ef=drop[1:])),
            "guidance: one batched forward": lambda: lvfm(x2, t2, ef2, cond2, drop_ef=drop),
        }, args.repeats)
    report("LVFM guided step, batch 1, 64 f", times, "guidance: two forwards")

    # VAE -------------------------------------------------------------------------------------------
    vae = bench.build_vae("avae-4f4")
    old = base_vae.AutoencoderKL(vae.config)
    old.load_state_dict(vae.state_dict())
    old.eval()
    z = torch.randn(16, 4, 28, 28)

    def chunked(model, size):
        return lambda: torch.cat([model.decode(c) for c in z.split(size)])

    with torch.no_grad():
        times = interleaved({
            f"{args.base} (unoptimised), chunks of 16": chunked(old, 16),
            "in-place, chunks of 16 (this tree)": chunked(vae, 16),
            "in-place, chunks of 4": chunked(vae, 4),
            "in-place, chunks of 8": chunked(vae, 8),
        }, args.repeats)
    report("A-VAE avae-4f4 decode, 16 frames", times, f"{args.base} (unoptimised), chunks of 16")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", default=DEFAULT_BASE, help="git revision of the unoptimised model files")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                               "base": args.base, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
