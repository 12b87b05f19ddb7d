"""`echoflow generate-dataset`: a privacy-filtered synthetic dataset in the EchoNet-Dynamic layout.

    echoflow generate-dataset --count N --ef-range LO HI --out DIR [...]
    torchrun --nproc-per-node 4 -m echoflow_models generate-dataset --count N --out DIR     (sharded)

Candidate k draws its latent image and its video noise with seed + k and its EF from its seed, so a run is
a pure function of its settings. Every option is checked, and the folder inspected read-only, before any
model loads; nothing is written before the models are loaded. A folder is resumed only with the settings it
was started with (kept per prefix in `.echoflow-dataset-runs.json`), each row records where it comes from
and the privacy verdict it passed, and a generation already in the dataset (same `Generation` key or the
same frames) is never written twice. What this command did not write it never deletes or rewrites.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from .conventions import EF_MAX, EF_MIN, VIEWS, dtype_of
from .options import UsageError, add_threads_arg, apply_threads, check_count, require

RUNS_NAME = ".echoflow-dataset-runs.json"
EXIT_GATE_REJECTED = 3  # as `echoflow generate`: the gate rejected every candidate allowed
MAX_COUNT = 10_000_000


# ---------------------------------------------------------------------------------------------- candidates
def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (single process: 0, 1, 0)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    require(world >= 1 and 0 <= rank < world and local >= 0,
            f"bad torchrun environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def rank_quota(count: int, rank: int, world: int) -> int:
    return count // world + (1 if rank < count % world else 0)


def candidate_ef(seed: int, lo: float, hi: float) -> float:
    """EF for a candidate, a pure function of its seed so a resumed run draws the same EF."""
    import torch

    u = torch.rand((), generator=torch.Generator("cpu").manual_seed(int(seed) ^ 0x5EED_EF)).item()
    return round(lo + (hi - lo) * u, 2)


def candidate_split(index: int, val_frac: float, test_frac: float) -> str:
    u = ((index * 2654435761) % 2**32) / 2**32  # a fixed, well-spread hash of the index
    if u < test_frac:
        return "TEST"
    if u < test_frac + val_frac:
        return "VAL"
    return "TRAIN"


def candidate_name(prefix: str, candidate: int) -> str:
    return f"{prefix}_{candidate:07d}"


def candidate_names(prefix: str) -> re.Pattern:
    """The file names (stems) this command writes under a prefix: exactly seven digits."""
    return re.compile(rf"^{re.escape(prefix)}_(\d{{7}})$")


class RejectLog:
    """``privacy_rejected.csv``: candidates the gate refused, so a resumed run skips them (one file per rank,
    appended and flushed per row)."""

    FIELDS = ["Candidate", "Seed", "MaxSimilarity", "NearestIndex", "Tau"]

    def __init__(self, folder: Path, rank: int):
        self.path = folder / (f"privacy_rejected.rank{rank}.csv" if rank else "privacy_rejected.csv")
        self.done: set[int] = set()
        for path in folder.glob("privacy_rejected*.csv"):
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    try:
                        self.done.add(int(row["Candidate"]))
                    except (KeyError, ValueError):
                        continue

    def add(self, candidate: int, seed: int, sim: float, index: int, tau: float) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.FIELDS)
            if new:
                w.writeheader()
            w.writerow({"Candidate": candidate, "Seed": seed, "MaxSimilarity": f"{sim:.6f}",
                        "NearestIndex": index, "Tau": tau})
            fh.flush()
            os.fsync(fh.fileno())
        self.done.add(candidate)


def existing_candidates(folder: Path, prefix: str) -> set[int]:
    """Candidate numbers already in FileList.csv under this prefix (names PREFIX_<7 digits>)."""
    from .echonet import read_filelist

    if not (folder / "FileList.csv").is_file():
        return set()
    pattern = candidate_names(prefix)
    return {int(m.group(1)) for rec in read_filelist(folder) if (m := pattern.match(rec.file_name))}


# ------------------------------------------------------------------------------------------------ checks
def check_args(args: argparse.Namespace) -> None:
    """Every option checked before any model loads (UsageError: exit status 2)."""
    from .options import check_sampling_options, check_tau_option
    from .sampling import check_seed
    from .synthetic_dataset import check_name_prefix

    check_count(args.count, "--count", 1, MAX_COUNT)
    lo, hi = args.ef_range
    require(math.isfinite(lo) and math.isfinite(hi) and EF_MIN <= lo <= hi <= EF_MAX,
            f"--ef-range must satisfy {EF_MIN:g} <= LO <= HI <= {EF_MAX:g}, got {lo:g} {hi:g}")
    check_count(args.batch_size, "--batch-size", 1, 1024)
    check_sampling_options(args)
    require(0 <= args.val_frac <= 1 and 0 <= args.test_frac <= 1 and args.val_frac + args.test_frac <= 1,
            f"--val-frac and --test-frac must be in [0, 1] with a sum <= 1, got {args.val_frac:g} {args.test_frac:g}")
    if args.max_candidates is not None:
        check_count(args.max_candidates, "--max-candidates", 1)
    try:
        check_name_prefix(args.prefix, "--prefix")
        # candidates (and their seeds) run up to about 20 x count + a few batches
        check_seed(args.seed, 40 * args.count + 16 * args.batch_size, "--seed")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_tau_option(args, [args.view])


def check_out_folder(out: Path, args: argparse.Namespace) -> list[Path]:
    """The dataset folder inspected read-only: writable (or creatable), ours or opted into, no user file in
    the way of a name this run writes. Returns the user's videos, which are left alone."""
    from .echonet import EchoNetFormatError
    from .options import check_writable_target
    from .synthetic_dataset import SYNTHETIC_COLUMNS, check_dataset_folder

    check_writable_target(out, "--out")
    try:
        return check_dataset_folder(out, SYNTHETIC_COLUMNS, add_missing_columns=args.append_to_existing,
                                    reserved=candidate_names(args.prefix))
    except EchoNetFormatError as exc:
        raise UsageError(f"--out {out}: {exc}") from None


def run_settings(args: argparse.Namespace, pipe, world: int) -> dict:
    """What a run under one prefix must keep when resumed: anything else would mix two datasets."""
    gate = pipe.gates[args.view]
    # the weights by content (fingerprints), not by the folder's name or how its path was given
    return {"fingerprints": {"lifm": pipe.lifm.fingerprint, "lvfm": pipe.lvfm.fingerprint,
                             "vae": pipe.vae.fingerprint, "reid": gate.reid.fingerprint},
            "view": args.view, "image_steps": args.image_steps, "video_steps": args.video_steps,
            "solver": args.solver, "guidance": args.guidance if args.guidance is not None else pipe.default_guidance,
            "tau": gate.tau, "similarity": gate.similarity, "seed": args.seed, "ef_range": list(args.ef_range),
            "batch_size": args.batch_size, "val_frac": args.val_frac, "test_frac": args.test_frac, "fps": args.fps,
            "world_size": world, "dtype": args.dtype}


def check_resume(out: Path, prefix: str, settings: dict) -> None:
    """Refuse to resume a prefix with other settings than it was started with (nothing written yet)."""
    path = out / RUNS_NAME
    if not path.is_file():
        return
    try:
        runs = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc}); it records how this folder's runs were made. Restore "
                         "it, or write into a new folder") from None
    before = runs.get(prefix) if isinstance(runs, dict) else None
    if before is None:
        return
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed[:6])
        raise UsageError(
            f"--out {out}: the videos named {prefix}_* were made with other settings ({shown}). Resuming would "
            "mix two datasets under one prefix: use the same settings, another --prefix, or another --out"
        )


def record_run(out: Path, prefix: str, settings: dict) -> None:
    path = out / RUNS_NAME
    runs = json.loads(path.read_text()) if path.is_file() else {}
    if runs.get(prefix) == settings:
        return
    runs[prefix] = settings
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(runs, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ command
def cmd_generate_dataset(args: argparse.Namespace) -> int:
    import torch

    from .options import pick_device
    from .pipeline import EchoFlowPipeline
    from .synthetic_dataset import append_synthetic, generation_key

    check_args(args)
    lo, hi = args.ef_range
    view = args.view
    rank, world, local = dist_env()
    out = Path(args.out).expanduser()
    foreign = check_out_folder(out, args)
    if args.device == "auto" and torch.cuda.is_available():
        device = torch.device(f"cuda:{local % torch.cuda.device_count()}")
    else:
        device = pick_device(args.device)
    apply_threads(args)
    dtype = dtype_of(args.dtype)
    quota = rank_quota(args.count, rank, world)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[rank {rank}/{world}] {m}", file=sys.stderr,
                                                                flush=True))
    pipe = EchoFlowPipeline.from_folder(args.weights, args.vae, args.lifm, args.lvfm, views=[view], tau=args.tau,
                                        similarity=args.similarity, device=device, dtype=dtype,
                                        allow_looser_tau=args.allow_looser_tau)
    settings = run_settings(args, pipe, world)
    check_resume(out, args.prefix, settings)
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5])
        say(f"note: {len(foreign)} video(s) in {out / 'Videos'} are not in FileList.csv ({shown}"
            f"{', ...' if len(foreign) > 5 else ''}); they are left alone")
    # From here on this command writes into the folder (the models are loaded and every check passed).
    out.mkdir(parents=True, exist_ok=True)
    record_run(out, args.prefix, settings)
    weights_id = f"{pipe.provenance['lifm']}+{pipe.provenance['lvfm']}"
    guidance = settings["guidance"]
    rejects = RejectLog(out, rank)
    bs = args.batch_size
    # Candidates come in blocks of bs consecutive indices (so a block's seeds are consecutive and the batch
    # equals single runs); block b belongs to rank b % world.
    mine = lambda done: {c for c in done if (c // bs) % world == rank}  # noqa: E731
    accepted = mine(existing_candidates(out, args.prefix))
    limit = args.max_candidates if args.max_candidates is not None else max(20 * quota, quota + 8 * bs)
    tried = len(accepted) + len(mine(rejects.done))
    if len(accepted) >= quota:
        say(f"already complete: {len(accepted)}/{quota} videos")
        return 0
    say(f"{len(accepted)}/{quota} videos present; generating the rest into {out}")
    block = rank
    start_time = time.perf_counter()
    skipped = 0
    while len(accepted) < quota:
        if tried >= limit:
            print(f"error: rank {rank} tried {tried} candidates and {len(accepted)}/{quota} passed the privacy gate "
                  f"(tau {pipe.gates[view].tau:g}); raise --max-candidates. Nothing that failed the gate was "
                  "written", file=sys.stderr)
            return EXIT_GATE_REJECTED
        first = block * bs
        block += world
        todo = [c for c in range(first, first + bs) if c not in accepted and c not in rejects.done]
        if not todo:
            continue
        images = pipe.sample_images(view, None, args.image_steps, args.solver, seed=args.seed + first,
                                    batch_size=bs)
        images = images[[c - first for c in todo]]
        report = pipe.check_privacy(images, view)
        tried += len(todo)
        keep = []
        for c, item in zip(todo, report.items, strict=True):
            if item.passed:
                keep.append(c)
            else:
                rejects.add(c, args.seed + c, item.max_similarity, item.nearest_index, report.tau)
        keep = keep[: quota - len(accepted)]
        if not keep:
            continue
        idx = [todo.index(c) for c in keep]
        efs = [candidate_ef(args.seed + c, lo, hi) for c in keep]
        # the video noise of candidate c uses seed + c, like the image noise
        videos = torch.cat([pipe.animate(images[i:i + 1], efs[j], args.video_steps, args.solver, guidance,
                                         seed=args.seed + keep[j]) for j, i in enumerate(idx)])
        frames = pipe.decode(videos)
        for j, c in enumerate(keep):
            item = report.items[idx[j]]
            key = generation_key(lifm=settings["fingerprints"]["lifm"], lvfm=settings["fingerprints"]["lvfm"],
                                 vae=settings["fingerprints"]["vae"], view=view, image_steps=args.image_steps,
                                 video_steps=args.video_steps, image_solver=args.solver, video_solver=args.solver,
                                 guidance=float(guidance), dtype=args.dtype, seed=args.seed + c,
                                 video_seed=args.seed + c, ef=efs[j])
            extra = {"View": view, "MaxSimilarity": f"{item.max_similarity:.6f}", "Tau": f"{report.tau:.6g}",
                     "Seed": args.seed + c, "VideoSeed": args.seed + c, "Weights": weights_id, "Generation": key}
            rec, written = append_synthetic(out, frames[j].numpy(), args.fps, efs[j],
                                            candidate_split(c, args.val_frac, args.test_frac), extra,
                                            name=candidate_name(args.prefix, c),
                                            add_missing_columns=args.append_to_existing)
            if not written and rec.file_name != candidate_name(args.prefix, c):
                skipped += 1
                say(f"candidate {c}: the same video is already in the dataset as {rec.file_name}; not written again")
            accepted.add(c)
        rate = (time.perf_counter() - start_time) / max(1, tried)
        say(f"{len(accepted)}/{quota} videos ({tried} candidates, {rate:.1f}s per candidate)")
    say(f"done: {len(accepted) - skipped} videos" + (f" ({skipped} already present under other names)"
                                                      if skipped else ""))
    return 0


def add_subcommands(subparsers) -> None:
    g = subparsers.add_parser(
        "generate-dataset", help="generate a privacy-filtered synthetic dataset in the EchoNet-Dynamic layout",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--count", type=int, required=True, metavar="N", help="videos to generate in total (>= 1)")
    g.add_argument("--ef-range", type=float, nargs=2, default=[20.0, 80.0], metavar=("LO", "HI"),
                   help=f"EF percent range, drawn uniformly per video, {EF_MIN:g} <= LO <= HI <= {EF_MAX:g} "
                        "(default 20 80)")
    g.add_argument("--out", required=True, metavar="DIR",
                   help="dataset folder (created). An existing folder is resumed if this command made it; a "
                        "FileList.csv without its columns (a real dataset) is refused unless --append-to-existing")
    g.add_argument("--append-to-existing", action="store_true",
                   help="append to a FileList.csv this command did not make: the original is kept as "
                        "FileList.original.csv and the new FileList.csv gains the Source/Seed/... columns, so "
                        "every synthetic row stays marked")
    g.add_argument("--view", default="A4C", type=str.upper, choices=list(VIEWS), help="echo view (default A4C)")
    g.add_argument("--weights", default=None, help="weights root in the released layout (default: "
                                                   "$ECHOFLOW_WEIGHTS or the bundled demo weights)")
    g.add_argument("--vae", default=None, help="VAE folder name under vae/")
    g.add_argument("--lifm", default=None, help="image flow folder name under lifm/")
    g.add_argument("--lvfm", default=None, help="video flow folder name under lvfm/")
    g.add_argument("--image-steps", type=int, default=50, metavar="N", help="solver steps per image, 1-10000")
    g.add_argument("--video-steps", type=int, default=50, metavar="N", help="solver steps per video, 1-10000")
    g.add_argument("--solver", default="euler", choices=["euler", "heun", "midpoint"], help="ODE solver")
    g.add_argument("--guidance", type=float, default=None, metavar="S",
                   help="EF guidance 0-20, 1 = off (default: the video model's recommended value, else 1)")
    g.add_argument("--tau", type=float, default=None, metavar="T",
                   help="privacy threshold in (0, 1] (default: the weights' calibrated tau); lower is stricter, "
                        "looser needs --allow-looser-tau")
    g.add_argument("--allow-looser-tau", action="store_true",
                   help="accept a --tau above the calibrated one (recorded in every row's Tau)")
    g.add_argument("--similarity", default="pearson", choices=["pearson", "cosine"])
    g.add_argument("--seed", type=int, default=0, metavar="N", help="base seed (>= 0); candidate k uses N + k")
    g.add_argument("--batch-size", type=int, default=4, metavar="N", help="candidates sampled together (>= 1)")
    g.add_argument("--fps", type=float, default=32.0, help="frames per second of the AVIs (> 0, default 32)")
    g.add_argument("--prefix", default="synth", help="file names are PREFIX_<candidate, 7 digits> (letters, digits, "
                                                     "_ -)")
    g.add_argument("--val-frac", type=float, default=0.0, help="share of videos in the VAL split (0-1)")
    g.add_argument("--test-frac", type=float, default=0.0, help="share of videos in the TEST split (0-1)")
    g.add_argument("--max-candidates", type=int, default=None, metavar="N",
                   help="stop after this many candidates per rank (default: 20 x its quota); exit status 3")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="precision of the flow models")
    add_threads_arg(g)
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate_dataset)
