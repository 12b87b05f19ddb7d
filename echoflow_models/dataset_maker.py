"""`echoflow generate-dataset`: a privacy-filtered synthetic dataset in the EchoNet-Dynamic layout.

    echoflow generate-dataset --count N --ef-range LO HI --out DIR [--batch-size B] [...]
    torchrun --nproc-per-node 4 -m echoflow_models generate-dataset --count N --out DIR     (one shard per rank)
    echoflow generate-dataset --merge DIR            (assemble the shards into FileList.csv; the last rank does)

The dataset is `count` slots. Slot k is the video PREFIX_<k, 7 digits>: its attempt a draws its latent image
and its video noise with seed + k + a * ATTEMPT_STRIDE and its EF from that seed, and the first attempt the
privacy gate passes is the slot's video, so a run is a pure function of its settings, whatever the number of
ranks or the batch size. Rank r of w owns the slots k with k % w == r and writes only its own shard
(`dataset_shards`); candidates go through the image model, the gate, the video model and the decoder in
batches, and the gate judges every candidate before any is animated. Every option is checked, and the folder
inspected read-only, before any model loads; nothing is written before the models are loaded. A folder is
resumed (with any number of ranks) only with the settings it was started with (kept per prefix in
`.echoflow-dataset-runs.json`), each row records where it comes from and the privacy verdict it passed, and a
generation already in the dataset (same `Generation` key or the same frames) is never written twice. What
this command did not write it never deletes or rewrites.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .conventions import EF_MAX, EF_MIN, VIEWS, dtype_of
from .options import UsageError, add_threads_arg, apply_threads, check_count, require

RUNS_NAME = ".echoflow-dataset-runs.json"
EXIT_GATE_REJECTED = 3  # as `echoflow generate`: the gate rejected every candidate allowed
MAX_COUNT = 10_000_000
ATTEMPT_STRIDE = MAX_COUNT  # attempt a of slot k uses seed + k + a * stride: no two slots share a seed
MAX_ATTEMPTS = 1000  # per slot, as `echoflow generate --max-tries`
LAYOUT = "slots-v2"  # one name per slot (0..count-1), shards per rank; recorded so an older folder is not mixed in
MAX_BATCH = 1024
MAX_AUTO_BATCH = 64
TRACINGS_SUFFIX = ".tracings.csv"  # a rank's LV tracings beside its shard, folded into VolumeTracings.csv by the merge
CPU_BATCH_SIZE = 1  # batches were slower per candidate on the 2-core CPU (docs/benchmarks.md, "Dataset generation throughput")


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


def slot_seed(seed: int, slot: int, attempt: int) -> int:
    """The seed of a slot's attempt (its latent image and its video noise): attempt 0 of slot k uses seed + k;
    each attempt after a gate rejection moves one stride on, so slots never share a seed."""
    return seed + slot + attempt * ATTEMPT_STRIDE


def rank_slots(count: int, rank: int, world: int) -> range:
    """The slots a rank owns: a pure function of the slot number, so no rank needs to hear from another."""
    return range(rank, count, world)


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


def candidate_name(prefix: str, slot: int) -> str:
    return f"{prefix}_{slot:07d}"


def candidate_names(prefix: str) -> re.Pattern:
    """The file names (stems) this command writes under a prefix: exactly seven digits."""
    return re.compile(rf"^{re.escape(prefix)}_(\d{{7}})$")


@dataclass
class Progress:
    """What a folder records for one prefix, read without writing: slots with a video (or settled as a
    duplicate), the next attempt of each rejected slot, and every generation and frame hash already there."""

    done: set[int] = field(default_factory=set)
    next_attempt: dict[int, int] = field(default_factory=dict)
    generations: dict[str, str] = field(default_factory=dict)  # Generation key -> file name
    hashes: set[str] = field(default_factory=set)
    ours: set[str] = field(default_factory=set)  # journalled videos that no row lists: replaceable


def read_progress(out: Path, prefix: str) -> Progress:
    from .dataset_shards import read_shards
    from .echonet import read_filelist

    listed = read_filelist(out) if (out / "FileList.csv").is_file() else []
    shards = read_shards(out)
    progress = Progress()
    pattern = candidate_names(prefix)
    for rec in [*listed, *shards.rows]:
        if m := pattern.match(rec.file_name):
            progress.done.add(int(m.group(1)))
        if rec.extra.get("Generation"):
            progress.generations.setdefault(rec.extra["Generation"], rec.file_name)
        if rec.extra.get("ContentHash"):
            progress.hashes.add(rec.extra["ContentHash"])
    for row in read_shards(out, prefix).skipped:
        try:
            slot, attempt = int(row["Slot"]), int(row["Attempt"])
        except (KeyError, TypeError, ValueError):
            continue
        if row.get("Outcome") == "duplicate":
            progress.done.add(slot)
        else:
            progress.next_attempt[slot] = max(progress.next_attempt.get(slot, 0), attempt + 1)
    progress.ours = shards.journalled - {r.file_name for r in [*listed, *shards.rows]}
    return progress


# ------------------------------------------------------------------------------------------------ checks
def check_args(args: argparse.Namespace) -> None:
    """Every option checked before any model loads (UsageError: exit status 2)."""
    from .options import check_sampling_options, check_tau_option
    from .sampling import check_seed
    from .synthetic_dataset import check_name_prefix

    require(args.count is not None and args.out is not None,
            "--count N and --out DIR are required (or --merge DIR, to assemble the shards of a folder)")
    check_count(args.count, "--count", 1, MAX_COUNT)
    lo, hi = args.ef_range
    require(math.isfinite(lo) and math.isfinite(hi) and EF_MIN <= lo <= hi <= EF_MAX,
            f"--ef-range must satisfy {EF_MIN:g} <= LO <= HI <= {EF_MAX:g}, got {lo:g} {hi:g}")
    if args.batch_size is not None:
        check_count(args.batch_size, "--batch-size", 1, MAX_BATCH)
    check_sampling_options(args)
    require(0 <= args.val_frac <= 1 and 0 <= args.test_frac <= 1 and args.val_frac + args.test_frac <= 1,
            f"--val-frac and --test-frac must be in [0, 1] with a sum <= 1, got {args.val_frac:g} {args.test_frac:g}")
    if args.max_candidates is not None:
        check_count(args.max_candidates, "--max-candidates", 1)
    try:
        check_name_prefix(args.prefix, "--prefix")
        check_seed(args.seed, slot_seed(0, args.count, MAX_ATTEMPTS), "--seed")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_tau_option(args, [args.view])
    require(args.seg is None or args.lv_labels, "--seg names the model of --lv-labels; add --lv-labels or drop --seg")


def check_out_folder(out: Path, args: argparse.Namespace) -> list[Path]:
    """The dataset folder inspected read-only: writable (or creatable), ours or opted into, no user file in
    the way of a name this run writes. Returns the user's videos, which are left alone."""
    from .dataset_shards import read_shards
    from .echonet import EchoNetFormatError
    from .options import check_writable_target
    from .synthetic_dataset import SYNTHETIC_COLUMNS, check_dataset_folder

    check_writable_target(out, "--out")
    try:
        shards = read_shards(out)
        return check_dataset_folder(out, SYNTHETIC_COLUMNS, add_missing_columns=args.append_to_existing,
                                    reserved=candidate_names(args.prefix), ours=shards.names | shards.journalled)
    except EchoNetFormatError as exc:
        raise UsageError(f"--out {out}: {exc}") from None


def auto_batch_size(pipe, guidance: float, device) -> int:
    """Candidates per batch when --batch-size is not given: on a GPU as many as the video model's activations
    fit in 80 % of the free memory (the weights are loaded already), on a CPU `CPU_BATCH_SIZE`."""
    import torch

    from .memory import activation_bytes

    if torch.device(device).type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    per_candidate = activation_bytes(pipe.lvfm, 1 if guidance == 1 else 2, pipe.dtype)  # guidance: 2 branches
    return max(1, min(MAX_AUTO_BATCH, int(0.8 * free) // per_candidate))


def run_settings(args: argparse.Namespace, pipe) -> dict:
    """What a run under one prefix must keep when resumed: anything else would mix two datasets. The number
    of ranks and the batch size are not among them (the slots and their seeds do not depend on them)."""
    gate = pipe.gates[args.view]
    # the weights by content (fingerprints), not by the folder's name or how its path was given
    return {"layout": LAYOUT,
            "fingerprints": {"lifm": pipe.lifm.fingerprint, "lvfm": pipe.lvfm.fingerprint,
                             "vae": pipe.vae.fingerprint, "reid": gate.reid.fingerprint},
            "view": args.view, "image_steps": args.image_steps, "video_steps": args.video_steps,
            "solver": args.solver, "guidance": args.guidance if args.guidance is not None else pipe.default_guidance,
            "tau": gate.tau, "similarity": gate.similarity, "seed": args.seed, "ef_range": list(args.ef_range),
            "val_frac": args.val_frac, "test_frac": args.test_frac, "fps": args.fps, "dtype": args.dtype}


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
    if before.get("layout") != LAYOUT:
        raise UsageError(f"--out {out}: the videos named {prefix}_* were numbered by an earlier generate-dataset "
                         "(one name per candidate, not per slot). Resuming would mix two numberings: finish them "
                         "with that version, or use another --prefix or --out")
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
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{os.urandom(3).hex()}")  # ranks on other hosts too
    tmp.write_text(json.dumps(runs, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ command
@dataclass
class Candidate:
    slot: int
    attempt: int
    seed: int  # the latent image's and the video's
    ef: float
    key: str  # its Generation key


def cmd_merge(args: argparse.Namespace) -> int:
    from .dataset_shards import merge_shards, shard_files

    root = Path(args.merge).expanduser()
    require(root.is_dir(), f"--merge {root}: no such folder; give the --out folder of generate-dataset")
    require(bool(shard_files(root)), f"--merge {root}: no shards to merge (shards/<prefix>.rank<r>.csv); "
                                     "generate-dataset --out writes them")
    report_merge(merge_shards(root, add_missing_columns=args.append_to_existing), root, print)
    return 0


def report_merge(result, out: Path, say) -> None:
    for name, same in result.duplicates[:5]:
        say(f"{name} repeats {same} (same generation or frames): not listed again")
    say(f"merged {len(result.added)} new row(s) into {out / 'FileList.csv'} ({result.total} rows)")


def cmd_generate_dataset(args: argparse.Namespace) -> int:
    if args.merge is not None:
        return cmd_merge(args)
    import torch

    from .options import pick_device
    from .pipeline import EchoFlowPipeline

    check_args(args)
    rank, world, local = dist_env()
    out = Path(args.out).expanduser()
    foreign = check_out_folder(out, args)
    if args.device == "auto" and torch.cuda.is_available():
        device = torch.device(f"cuda:{local % torch.cuda.device_count()}")
    else:
        device = pick_device(args.device)
    apply_threads(args)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[rank {rank}/{world}] {m}", file=sys.stderr,
                                                                flush=True))
    pipe = EchoFlowPipeline.from_folder(args.weights, args.vae, args.lifm, args.lvfm, views=[args.view], tau=args.tau,
                                        similarity=args.similarity, device=device, dtype=dtype_of(args.dtype),
                                        allow_looser_tau=args.allow_looser_tau)
    settings = run_settings(args, pipe)
    check_resume(out, args.prefix, settings)
    labeller = open_labeller(args, out, say) if args.lv_labels else None
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5])
        say(f"note: {len(foreign)} video(s) in {out / 'Videos'} are not in FileList.csv ({shown}"
            f"{', ...' if len(foreign) > 5 else ''}); they are left alone")
    # From here on this command writes into the folder (the models are loaded and every check passed).
    out.mkdir(parents=True, exist_ok=True)
    record_run(out, args.prefix, settings)
    batch = args.batch_size or auto_batch_size(pipe, settings["guidance"], device)
    if labeller is not None:
        labeller.catch_up(rank_slots(args.count, rank, world), say)
    code = generate_slots(args, pipe, settings, out, rank, world, batch, say, labeller)
    if labeller is not None and labeller.unlabelled:
        print(f"note: {len(labeller.unlabelled)} video(s) got no LV labels: the segmentation model found no LV in "
              f"them ({', '.join(labeller.unlabelled[:5])}); their rows and videos are kept", file=sys.stderr)
    if code:
        return code
    return merge_when_complete(args, out, say)


def generate_slots(args, pipe, settings: dict, out: Path, rank: int, world: int, batch: int, say,
                   labeller: LVLabeller | None = None) -> int:
    """Fill this rank's slots into its own shard, `batch` candidates at a time."""
    from .dataset_shards import ShardWriter
    from .synthetic_dataset import content_hash, generation_key

    lo, hi = args.ef_range
    view, guidance, fingerprints = args.view, settings["guidance"], settings["fingerprints"]
    progress = read_progress(out, args.prefix)
    pending = [slot for slot in rank_slots(args.count, rank, world) if slot not in progress.done]
    attempts = {slot: progress.next_attempt.get(slot, 0) for slot in pending}
    limit = args.max_candidates if args.max_candidates is not None else max(20 * len(pending), len(pending) + 8 * batch)
    weights_id = f"{pipe.provenance['lifm']}+{pipe.provenance['lvfm']}"
    owned = len(rank_slots(args.count, rank, world))
    if not pending:
        say(f"this rank's {owned} slot(s) are done already")
        return 0
    say(f"{owned - len(pending)}/{owned} of this rank's videos present; generating the rest into {out}, {batch} "
        "candidates per batch")

    def candidate(slot: int) -> Candidate:
        seed = slot_seed(args.seed, slot, attempts[slot])
        ef = candidate_ef(seed, lo, hi)
        key = generation_key(lifm=fingerprints["lifm"], lvfm=fingerprints["lvfm"], vae=fingerprints["vae"], view=view,
                             image_steps=args.image_steps, video_steps=args.video_steps, image_solver=args.solver,
                             video_solver=args.solver, guidance=float(guidance), dtype=args.dtype, seed=seed,
                             video_seed=seed, ef=ef)
        return Candidate(slot, attempts[slot], seed, ef, key)

    tried, start_time, duplicates = 0, time.perf_counter(), 0
    with ShardWriter(out, args.prefix, rank, ours=progress.ours) as shard:
        while pending:
            if tried >= limit or max(attempts[s] for s in pending) >= MAX_ATTEMPTS:
                print(f"error: rank {rank} tried {tried} candidates and {len(pending)} of its slots are still without "
                      f"a video that passed the privacy gate (tau {pipe.gates[view].tau:g}); raise --max-candidates. "
                      "Nothing that failed the gate was written", file=sys.stderr)
                return EXIT_GATE_REJECTED
            todo = []
            for slot in pending[:batch]:
                cand = candidate(slot)
                same = progress.generations.get(cand.key)
                if same is not None:  # this very generation is listed already (e.g. under another prefix)
                    shard.skip(Slot=slot, Attempt=cand.attempt, Seed=cand.seed, Outcome="duplicate", SameAs=same)
                    say(f"slot {slot}: the same video is already in the dataset as {same}; not written again")
                    duplicates += 1
                    pending.remove(slot)
                else:
                    todo.append(cand)
            if not todo:
                continue
            images = pipe.sample_images(view, None, args.image_steps, args.solver, seeds=[c.seed for c in todo])
            report = pipe.check_privacy(images, view)  # judges every candidate before any is animated
            tried += len(todo)
            passed = []
            for index, (cand, item) in enumerate(zip(todo, report.items, strict=True)):
                if item.passed:
                    passed.append(index)
                    continue
                shard.skip(Slot=cand.slot, Attempt=cand.attempt, Seed=cand.seed, Outcome="privacy",
                           MaxSimilarity=f"{item.max_similarity:.6f}", NearestIndex=item.nearest_index,
                           Tau=f"{report.tau:.6g}")
                attempts[cand.slot] += 1
            if not passed:
                continue
            chosen = [todo[i] for i in passed]
            videos = pipe.animate(images[passed], [c.ef for c in chosen], args.video_steps, args.solver, guidance,
                                  seeds=[c.seed for c in chosen])
            frames = pipe.decode(videos)
            for i, cand, video in zip(passed, chosen, frames, strict=True):
                name = candidate_name(args.prefix, cand.slot)
                video = video.numpy()
                digest = content_hash(video)
                if digest in progress.hashes:
                    shard.skip(Slot=cand.slot, Attempt=cand.attempt, Seed=cand.seed, Outcome="duplicate",
                               SameAs="same frames")
                    duplicates += 1
                else:
                    item = report.items[i]
                    shard.add(name, video, args.fps, cand.ef, candidate_split(cand.slot, args.val_frac, args.test_frac),
                              {"View": view, "MaxSimilarity": f"{item.max_similarity:.6f}",
                               "Tau": f"{report.tau:.6g}", "Seed": cand.seed, "VideoSeed": cand.seed,
                               "Weights": weights_id, "Generation": cand.key})
                    progress.generations[cand.key] = name
                    progress.hashes.add(digest)
                    if labeller is not None:  # after the row: an interrupted labelling is caught up on resume
                        labeller.label(name, video)
                pending.remove(cand.slot)
            rate = (time.perf_counter() - start_time) / max(1, tried)
            say(f"{len(pending)} of this rank's slots to go ({tried} candidates, {rate:.1f}s per candidate)")
    say("this rank's slots are done" + (f" ({duplicates} already in the dataset under other names)"
                                         if duplicates else ""))
    return 0


class LVLabeller:
    """Writes each generated video's LV labels (`lv_labels.write_lv_labels`) from an LV segmentation model:
    the masks into Masks/<name>.npz, the ED/ES tracings into this rank's own file in shards/ (no lock shared
    between ranks), which the merge folds into VolumeTracings.csv."""

    def __init__(self, seg, out: Path, prefix: str, rank: int, view: str, fps: float, say) -> None:
        from .dataset_shards import shard_stem

        self.seg, self.out, self.prefix, self.view, self.fps, self.say = seg, out, prefix, view, fps, say
        stem = shard_stem(out, prefix, rank)
        self.tracings = stem.with_name(stem.name + TRACINGS_SUFFIX)
        self.unlabelled: list[str] = []

    def label(self, name: str, frames) -> None:
        """Segment and write; a video whose LV the model cannot find keeps its row and gets no labels (said,
        and counted in the summary: a wrong outline would be worse than none)."""
        from .lv_ef import segment_and_measure
        from .lv_labels import LVLabelError, traced_frames, write_lv_labels

        masks, measured = segment_and_measure(self.seg, frames, self.fps, self.view)
        try:
            ed, es = traced_frames(measured.volumes, measured.ed_frames, measured.es_frames)
            write_lv_labels(self.out, name, masks, ed, es, tracings_file=self.tracings)
        except LVLabelError as exc:
            self.unlabelled.append(name)
            self.say(f"{name}: no LV labels written ({exc})")

    def catch_up(self, slots, say) -> None:
        """Label the videos of `slots` that have a row but no masks file (a run stopped between the row and
        its labels; the npz is written last, so one that exists means the labels are complete)."""
        from .dataset_shards import read_shards
        from .echonet import read_filelist
        from .lv_labels import MASKS_DIR
        from .video_io import read_video

        listed = read_filelist(self.out) if (self.out / "FileList.csv").is_file() else []
        with_rows = {r.file_name for r in [*listed, *read_shards(self.out, self.prefix).rows]}
        todo = [name for name in (candidate_name(self.prefix, s) for s in slots)
                if name in with_rows and not (self.out / MASKS_DIR / f"{name}.npz").is_file()]
        for name in todo:
            frames, _ = read_video(self.out / "Videos" / f"{name}.avi", gray=True)
            self.label(name, frames)
        if todo:
            say(f"wrote the LV labels of {len(todo)} video(s) listed before without them")


def open_labeller(args: argparse.Namespace, out: Path, say) -> LVLabeller:
    """The LV labeller of `--lv-labels`, checked before anything is generated: the weights' seg model (or
    `--seg`) and a VolumeTracings.csv, if the folder has one, in EchoNet's layout."""
    from .checkpoint import load_model
    from .lv_labels import LVLabelError, check_tracings_file
    from .weights import default_weights_root, resolve_model

    root = Path(args.weights).expanduser() if args.weights else default_weights_root()
    try:
        seg = load_model(resolve_model(root, "seg", args.seg)).eval()
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--lv-labels needs an LV segmentation model (seg/<name>/ in the weights root): {exc}. "
                         "Train one with `echoflow train seg`, or drop --lv-labels") from None
    if getattr(seg, "kind", None) != "seg":
        raise UsageError(f"--seg {args.seg}: {type(seg).__name__} is not an LV segmentation model")
    if out.is_dir():
        try:
            check_tracings_file(out)
        except LVLabelError as exc:
            raise UsageError(f"--lv-labels: {exc}") from None
    return LVLabeller(seg, out, args.prefix, dist_env()[0], args.view, args.fps, say)


def merge_when_complete(args: argparse.Namespace, out: Path, say) -> int:
    """The rank that finds every slot done merges the shards into FileList.csv (two that finish together
    write the same bytes); the others leave it to the last, or to `--merge`."""
    from .dataset_shards import merge_shards

    missing = [s for s in range(args.count) if s not in read_progress(out, args.prefix).done]
    if missing:
        say(f"{len(missing)} slot(s) of other ranks still to come; the last rank to finish merges the shards into "
            f"FileList.csv (or run: echoflow generate-dataset --merge {out})")
        return 0
    from .echonet import DatasetLockedError

    try:
        result = merge_shards(out, add_missing_columns=args.append_to_existing)
    except DatasetLockedError:
        # another rank finishing at the same moment is merging the same shards (or the ComfyUI node is
        # appending): this rank's work is safe in its shard, and the merge is idempotent
        say(f"another process holds the dataset's lock (a rank merging the same shards); if FileList.csv lacks "
            f"rows when everything has stopped, run: echoflow generate-dataset --merge {out}")
        return 0
    report_merge(result, out, say)
    return 0


def add_subcommands(subparsers) -> None:
    g = subparsers.add_parser(
        "generate-dataset", help="generate a privacy-filtered synthetic dataset in the EchoNet-Dynamic layout",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--count", type=int, default=None, metavar="N", help="videos to generate in total (>= 1)")
    g.add_argument("--ef-range", type=float, nargs=2, default=[20.0, 80.0], metavar=("LO", "HI"),
                   help=f"EF percent range, drawn uniformly per video, {EF_MIN:g} <= LO <= HI <= {EF_MAX:g} "
                        "(default 20 80)")
    g.add_argument("--merge", default=None, metavar="DIR",
                   help="only assemble DIR's shards (shards/<prefix>.rank<r>.csv) into its FileList.csv, atomically; "
                        "the last rank to finish does this by itself")
    g.add_argument("--out", default=None, metavar="DIR",
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
    g.add_argument("--seed", type=int, default=0, metavar="N",
                   help="base seed (>= 0); video k uses N + k, or N + k + a * 10^7 after a rejections by the gate")
    g.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"candidates run together through every model (1-{MAX_BATCH}; default: on a GPU as many as "
                        f"fit in its free memory, up to {MAX_AUTO_BATCH}; on a CPU {CPU_BATCH_SIZE}). Results equal "
                        "single runs up to float rounding")
    g.add_argument("--fps", type=float, default=32.0, help="frames per second of the AVIs (> 0, default 32)")
    g.add_argument("--prefix", default="synth", help="file names are PREFIX_<candidate, 7 digits> (letters, digits, "
                                                     "_ -)")
    g.add_argument("--val-frac", type=float, default=0.0, help="share of videos in the VAL split (0-1)")
    g.add_argument("--test-frac", type=float, default=0.0, help="share of videos in the TEST split (0-1)")
    g.add_argument("--max-candidates", type=int, default=None, metavar="N",
                   help="stop after this many candidates per rank (default: 20 x its slots); exit status 3")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="precision of the flow models")
    add_threads_arg(g)
    g.add_argument("--lv-labels", action="store_true",
                   help="also write LV labels of every video, segmented by the weights' LV segmentation model: "
                        "Masks/<name>.npz (a mask per frame) and its ED/ES tracings in VolumeTracings.csv "
                        "(EchoNet-Dynamic's layout), so the dataset trains segmentation models too")
    g.add_argument("--seg", default=None, help="LV segmentation folder name under seg/ (with --lv-labels)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate_dataset)
