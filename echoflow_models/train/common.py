"""Shared training machinery: arguments, seeds, AdamW, EMA, LR schedule, clipping, autocast, resume, the loop.

A training run writes into one folder (``--out``), which is a model folder in the released layout as soon
as the first checkpoint is saved::

    OUT/config.json + diffusion_pytorch_model.safetensors     (EMA weights; ReID: config.yaml + backbone.safetensors)
    OUT/training/state.pt      everything needed to resume (raw + EMA weights, optimizers, step, RNG, clock)
    OUT/training/args.json     the arguments of the first run
    OUT/training/log.jsonl     one JSON line per logged step

``--resume`` continues from ``OUT/training/state.pt``; without it an existing state is refused (or
replaced with ``--overwrite``). All randomness of a run comes from one ``torch.Generator`` whose state is
checkpointed, so a resumed run draws the same batches it would have drawn without the interruption.

Data parallelism (`train/distributed.py`): under ``torchrun --nproc-per-node N`` every rank trains on its own
``--batch-size`` per micro-batch and gradients are averaged over the ranks before each optimizer step;
``--global-batch G`` adds gradient accumulation (G / (batch size x ranks) micro-batches per step), so the
same G trains the same optimisation on 1 or 8 GPUs. Each micro-batch *slot* (rank r, micro-batch k) draws
from its own generator (slot ``r * K + k``; slot 0 is the single-process generator), so 2 ranks x 1
micro-batch draw exactly what 1 rank x 2 micro-batches draws. Rank 0 alone writes the log, checkpoints
(with every slot's generator state) and the exported model; a resume with the same number of slots continues
the same draws, with another number of slots it re-seeds them from (seed, step, slot).

Stopping: at ``--steps`` or when ``--max-minutes`` of training time (summed over resumes) have passed,
whichever comes first. The learning-rate schedule (linear warm-up, then cosine or constant) runs on the
*progress* ``max(step / steps, minutes / max_minutes)``, so a time-limited run still anneals to its end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_model, save_model
from ..progress import ProgressBar, format_seconds
from .distributed import (
    average_gradients,
    barrier,
    broadcast_buffers,
    broadcast_from_main,
    gather_to_main,
    init_distributed,
    launched_world,
    mean_over_ranks,
    rank_device,
)

STATE_DIR = "training"
STATE_NAME = "state.pt"


# ----------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float,
                    max_minutes: float | None = None, ema: float = 0.999, weight_decay: float = 0.01,
                    warmup: int = 100, data_required: bool = True) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--data", required=data_required,
                   help="EchoNet-Dynamic layout folder (FileList.csv + Videos/); phantom datasets work too")
    g.add_argument("--out", required=True, help="output model folder (released layout) + OUT/training/")
    g.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"samples per micro-batch on each process (default {batch_size})")
    g.add_argument("--global-batch", type=int, default=None, metavar="G",
                   help="samples per optimizer step over all processes: G / (batch size x processes) micro-"
                        "batches are accumulated (default: batch size x processes, no accumulation; on "
                        "--resume: the checkpoint's)")
    g.add_argument("--lr", type=float, default=lr, help=f"peak AdamW learning rate (default {lr:g})")
    g.add_argument("--weight-decay", type=float, default=weight_decay)
    g.add_argument("--warmup", type=int, default=warmup, help="linear warm-up steps")
    g.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                   help="after warm-up: cosine to 10%% of the peak, or constant")
    g.add_argument("--ema", type=float, default=ema, help="EMA decay of the saved weights (0 = no EMA)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-minutes", type=float, default=max_minutes,
                   help="stop (and save) after this much training time, resumes included")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: the physical cores; 1 on a machine shared with other work)")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="bf16 autocast (auto: on for CUDA, off on CPU)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/training/state.pt")
    g.add_argument("--overwrite", action="store_true", help="start over even if OUT holds a training state")
    g.add_argument("--init", default=None, help="start from the weights of this model folder (fine-tuning)")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--log-every", type=int, default=25)
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def namespace_for(add_args: Callable[[argparse.ArgumentParser], None], **overrides) -> argparse.Namespace:
    """Defaults of a sub-command's parser with `overrides` applied (the Python API of every trainer)."""
    parser = argparse.ArgumentParser()
    add_args(parser)
    for action in parser._actions:  # required options become optional; overrides must supply them
        action.required = False
    args = parser.parse_args([])
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if not hasattr(args, key):
            raise TypeError(f"unknown training option {key!r}")
        setattr(args, key, value)
    return args


# ----------------------------------------------------------------------------------------------------
# Devices, seeds, precision
# ----------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available; a CUDA device without a GPU is a clear error (the CLI's rule)."""
    from ..conventions import pick_device

    return pick_device(name)


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch's global RNG (weight init) and returns the run's own generator (batches, noise)."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


def slot_seed(seed: int, slot: int, step: int = 0) -> int:
    """Seed of micro-batch slot `slot` (see the module docstring): slot 0 at step 0 is `seed_everything`'s
    generator; the others (and re-seeds at a resume `step`) are spread by a 64-bit mix of (seed, slot, step)."""
    if slot == 0 and step == 0:
        return seed + 1
    x = (seed * 0x9E3779B97F4A7C15 + slot * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    return int(x >> 1)  # manual_seed takes 63 bits


# ----------------------------------------------------------------------------------------------------
# Optimisation helpers
# ----------------------------------------------------------------------------------------------------


def make_adamw(params, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/kernels only (not on biases, norms, embeddings' 1-D tensors)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=1e-8)


def lr_factor(step: int, progress: float, warmup: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to 0.1 over the run's progress (or constant)."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    p = min(max(progress, 0.0), 1.0)
    return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def clip_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params, clip: float,
                  retain_graph: bool = False) -> float:
    """backward, clip the gradient norm (returns it, before clipping), step, zero the gradients. Under
    torchrun the gradients are first averaged over the ranks (`optimizer_step`)."""
    loss.backward(retain_graph=retain_graph)
    return optimizer_step(optimizer, params, clip)


def optimizer_step(optimizer: torch.optim.Optimizer, params, clip: float) -> float:
    """Average the gradients over the ranks (a no-op in one process), clip their norm (returns it, before
    clipping), step, zero the gradients."""
    params = list(params)
    average_gradients(params)
    params = [p for p in params if p.grad is not None]
    if clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))) if params else 0.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied), with the usual warm-up
    `decay_t = min(decay, (1 + step) / (10 + step))` so short runs are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.decay > 0 else 0.0
        ema_state = self.model.state_dict()
        for key, value in model.state_dict().items():
            target = ema_state[key]
            if value.is_floating_point() and d > 0:
                target.lerp_(value.detach().to(target.dtype), 1.0 - d)
            else:
                target.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])


def init_from(model: nn.Module, folder: str | Path) -> None:
    """Copy weights from a model folder (strict) into `model`, for fine-tuning."""
    source = load_model(folder)
    model.load_state_dict(source.state_dict(), strict=True)


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------


class Run:
    """Bookkeeping for one training run: ranks, resume, schedule, stopping, EMA, saving, logging, progress.

    Usage::

        run = Run(args, "lifm")
        opt = run.optimizer(model.parameters())
        run.track(model=model, optimizers={"opt": opt}, ema=True)   # restores a resumed state
        for step in run.steps():
            for gen in run.micro_batches():            # --global-batch: K micro-batches per step
                loss = ... (a batch of --batch-size drawn with gen)
                run.backward(loss)
            gnorm = run.step_optimizer(opt, model.parameters())
            run.log(loss=run.step_mean())
        run.finish()

    A stage that draws one batch per step from ``run.gen`` and calls `clip_and_step` trains data-parallel
    too (without --global-batch accumulation, which it refuses).
    """

    def __init__(self, args: argparse.Namespace, kind: str, gen: torch.Generator | None = None):
        self.args = args
        self.kind = kind
        self.out = Path(args.out)
        self.state_dir = self.out / STATE_DIR
        self.state_path = self.state_dir / STATE_NAME
        if args.threads:
            torch.set_num_threads(int(args.threads))
        launched = launched_world()
        self.device = resolve_device(rank_device(args.device, launched))
        self.world = init_distributed(self.device)
        self.is_main = self.world.is_main
        seed_gen = gen if gen is not None else seed_everything(args.seed)
        # rank 0 decides, so a state another rank writes meanwhile cannot make the ranks disagree
        problem = None
        if self.is_main:
            if self.state_path.is_file() and not (args.resume or args.overwrite):
                problem = (f"error: {self.state_path} exists; pass --resume to continue that run or "
                           "--overwrite to start over")
            elif args.resume and not self.state_path.is_file():
                problem = f"error: --resume but there is no {self.state_path} to resume from"
        problem = broadcast_from_main(problem)
        if problem:
            raise SystemExit(problem)
        asked = getattr(args, "global_batch", None)
        saved_global = self._saved_global_batch() if args.resume and not asked else None
        self.grad_accum = self._accumulation(asked or saved_global, from_checkpoint=not asked)
        self.global_batch = int(args.batch_size) * self.world.size * self.grad_accum
        self.slots = self.world.size * self.grad_accum
        first = self.world.rank * self.grad_accum
        self.generators = [seed_gen if s == 0 else torch.Generator().manual_seed(slot_seed(args.seed, s))
                           for s in range(first, first + self.grad_accum)]
        self.gen = self.generators[0]
        self.step = 0
        self.elapsed = 0.0  # training seconds over all resumes
        self.resumed = False
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: EMA | None = None
        self.save_model_name = "model"
        self.extra_state: dict = {}
        self._bar: ProgressBar | None = None
        self._last_log: dict = {}
        self._log_fh = None
        self._t0 = 0.0
        self._loop_elapsed0 = 0.0
        self._stopped_by = "steps"
        self._micro_batches_drawn = 0
        self._step_means: dict[str, torch.Tensor] = {}

    def _saved_global_batch(self) -> int | None:
        state = torch.load(str(self.state_path), map_location="cpu", weights_only=True)
        # a state saved before the global batch was recorded comes from one process without accumulation
        return state.get("global_batch") or int(self.args.batch_size)

    def _accumulation(self, global_batch: int | None, from_checkpoint: bool = False) -> int:
        """Micro-batches per optimizer step on each rank for a global batch (1 when none is asked for)."""
        per_step = int(self.args.batch_size) * self.world.size
        if not global_batch:
            return 1
        if global_batch % per_step:
            what = (f"the checkpoint's global batch {global_batch} (the run being resumed)" if from_checkpoint
                    else f"--global-batch {global_batch}")
            raise SystemExit(f"error: {what} is not a multiple of --batch-size {self.args.batch_size} x "
                             f"{self.world.size} process(es) = {per_step}; pick a batch size that divides it, or "
                             "pass --global-batch to change the optimisation on purpose")
        return global_batch // per_step

    # -- setup -------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.args.amp)

    def optimizer(self, params, lr: float | None = None, weight_decay: float | None = None,
                  betas=(0.9, 0.999)) -> torch.optim.AdamW:
        return make_adamw(params, self.args.lr if lr is None else lr,
                          self.args.weight_decay if weight_decay is None else weight_decay, betas)

    def track(self, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
              save: str = "model", ema: bool = True) -> None:
        """Register what is checkpointed; `save` names the model written in the released layout (EMA
        weights when `ema`). Restores everything when resuming."""
        self.models = models
        self.optimizers = optimizers
        self.save_model_name = save
        if self.args.init and not self.args.resume:
            init_from(models[save], self.args.init)
        if self.world.distributed:  # every rank starts from rank 0's weights, as DDP does
            for model in models.values():
                broadcast_buffers([model])
                for p in model.parameters():
                    torch.distributed.broadcast(p.data, 0)
        if ema and self.args.ema > 0:
            self.ema = EMA(models[save], self.args.ema)
        if self.args.resume:
            self._restore()
        if not self.is_main:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args_path = self.state_dir / "args.json"
        if not args_path.exists() or not self.args.resume:
            args_path.write_text(json.dumps(vars(self.args), indent=2, default=str) + "\n")
        mode = "a" if self.args.resume else "w"
        self._log_fh = open(self.state_dir / "log.jsonl", mode)

    def _restore(self) -> None:
        state = torch.load(str(self.state_path), map_location="cpu", weights_only=True)
        if state.get("kind") != self.kind:
            raise SystemExit(f"error: {self.state_path} is a {state.get('kind')} run, not {self.kind}")
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        saved = state.get("generators") or [state["generator"]]
        first = self.world.rank * self.grad_accum
        for k, gen in enumerate(self.generators):
            if len(saved) == self.slots:  # the same slots (any split into ranks x micro-batches): same draws
                gen.set_state(saved[first + k])
            else:
                gen.manual_seed(slot_seed(self.args.seed, first + k, self.step))
        self.elapsed = float(state["elapsed"])
        self.extra_state = state.get("extra", {})
        self.resumed = True

    # -- loop --------------------------------------------------------------------------------------
    def time_budget_s(self) -> float | None:
        mm = self.args.max_minutes
        return float(mm) * 60.0 if mm else None

    def progress(self) -> float:
        p = self.step / max(self.args.steps, 1)
        budget = self.time_budget_s()
        if budget:
            p = max(p, self.elapsed / budget)
        return p

    def micro_batches(self) -> Iterator[torch.Generator]:
        """This rank's micro-batch generators of the current step (one without --global-batch)."""
        for gen in self.generators:
            self._micro_batches_drawn += 1
            yield gen

    def backward(self, loss: torch.Tensor, retain_graph: bool = False, key: str = "loss") -> None:
        """Backward of one micro-batch's mean loss, scaled so the accumulated gradient is the step's mean;
        `step_mean(key)` then gives the step's mean loss for the log."""
        scaled = loss / self.grad_accum if self.grad_accum > 1 else loss
        scaled.backward(retain_graph=retain_graph)
        self._step_means[key] = self._step_means.get(key, 0.0) + scaled.detach()

    def step_mean(self, key: str = "loss") -> torch.Tensor:
        """The mean over this step's micro-batches of the losses passed to `backward` under `key`."""
        return self._step_means[key]

    def step_optimizer(self, optimizer: torch.optim.Optimizer, params, clip: float | None = None) -> float:
        """Average over ranks, clip (--grad-clip), step, zero; returns the gradient norm before clipping."""
        return optimizer_step(optimizer, params, self.args.grad_clip if clip is None else clip)

    def _sync_elapsed(self) -> None:
        """Rank 0's clock on every rank: the schedule and the time budget must not differ between ranks."""
        if self.world.distributed and self.time_budget_s() is not None:
            t = torch.tensor([self.elapsed], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(t, 0)
            self.elapsed = float(t)

    def steps(self) -> Iterator[int]:
        """Yields step indices until --steps or --max-minutes; saves every --save-every and at the end."""
        for m in self.models.values():
            m.to(self.device).train()
        if self.ema is not None:
            self.ema.model.to(self.device)
        self._bar = ProgressBar(f"train {self.kind}", enabled=not self.args.quiet and self.is_main)
        budget = self.time_budget_s()
        self._t0 = time.perf_counter() - self.elapsed
        self._loop_elapsed0 = self.elapsed
        start_step = self.step
        while self.step < self.args.steps:
            if budget is not None and self.elapsed >= budget:
                self._stopped_by = "max-minutes"
                break
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group.setdefault("base_lr", group["lr"])
                    group["lr"] = group["base_lr"] * lr_factor(self.step, self.progress(), self.args.warmup,
                                                               self.args.schedule)
            self._step_means = {}
            yield self.step
            if self.grad_accum > 1 and not self._micro_batches_drawn:
                raise SystemExit(f"error: train {self.kind} does not support --global-batch accumulation; "
                                 "leave --global-batch out (or equal to --batch-size x processes)")
            self.step += 1
            self.elapsed = time.perf_counter() - self._t0
            self._sync_elapsed()
            if self.world.distributed:
                broadcast_buffers(self.models.values())
            if self.ema is not None:
                self.ema.update(self.models[self.save_model_name])
            self._draw(budget, start_step)
            if self.args.save_every and self.step % self.args.save_every == 0 and self.step < self.args.steps:
                self.save()
        self.save()
        if self._bar is not None and self._bar.enabled:
            self._bar.stream.write("\n")

    def _draw(self, budget: float | None, start_step: int) -> None:
        if self._bar is None:
            return
        total = self.args.steps
        done = self.step
        rate = (done - start_step) / max(self.elapsed - self._loop_elapsed0, 1e-9)
        eta_steps = (total - done) / rate if rate > 0 else float("inf")
        eta = eta_steps if budget is None else min(eta_steps, max(budget - self.elapsed, 0.0))
        losses = " ".join(f"{k} {v:.4g}" for k, v in self._last_log.items() if isinstance(v, float))
        self._bar.postfix = f"eta {format_seconds(eta)} {losses}"
        self._bar.update(min(done, total - 1) if done < total else total, total)

    def log(self, **values) -> None:
        """Record losses/metrics of the current step; written every --log-every steps (by rank 0, the
        mean over the ranks)."""
        values = {k: (float(v.detach()) if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
        due = self.step % max(self.args.log_every, 1) == 0
        if due:
            values = mean_over_ranks(values, self.device)
        self._last_log = values
        if self._log_fh is not None and due:
            row = {"step": self.step, "minutes": round(self.elapsed / 60.0, 3), **values}
            self._log_fh.write(json.dumps(row) + "\n")
            self._log_fh.flush()

    # -- saving ------------------------------------------------------------------------------------
    def export_model(self) -> nn.Module:
        """The model written in the released layout: the EMA copy if there is one."""
        return self.ema.model if self.ema is not None else self.models[self.save_model_name]

    def save(self) -> None:
        """Checkpoint (every rank takes part: rank 0 collects the generator states and writes)."""
        generators = gather_to_main([g.get_state() for g in self.generators])
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        model = self.export_model()
        was_training = model.training
        model.eval()
        save_model(model, self.out)
        model.train(was_training)
        slots = [s for per_rank in generators for s in per_rank]
        state = {
            "kind": self.kind,
            "step": self.step,
            "elapsed": self.elapsed,
            "generator": slots[0],
            "models": {k: {n: t.detach().cpu() for n, t in m.state_dict().items()} for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "extra": self.extra_state,
        }
        # the global batch is saved always, so a resume under torchrun keeps it (or says why it cannot)
        state.update(global_batch=self.global_batch, world_size=self.world.size)
        if self.slots > 1:
            state.update(generators=slots)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, str(tmp))
        os.replace(tmp, self.state_path)

    def finish(self, **summary) -> dict:
        """Close the log and write OUT/training/summary.json (rank 0); returns the summary."""
        info = {"kind": self.kind, "steps": self.step, "minutes": round(self.elapsed / 60.0, 2),
                "stopped_by": self._stopped_by if self.step < self.args.steps else "steps",
                "last": self._last_log, **summary}
        if self.world.distributed:
            info.update(world_size=self.world.size, global_batch=self.global_batch)
        elif self.grad_accum > 1:
            info["global_batch"] = self.global_batch
        if self.is_main:
            (self.state_dir / "summary.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if not self.args.quiet and self.is_main:
            print(f"{self.kind}: {self.step} steps in {format_seconds(self.elapsed)} -> {self.out}"
                  + "".join(f", {k} {v:.4g}" for k, v in summary.items() if isinstance(v, float)))
        barrier()
        return info
