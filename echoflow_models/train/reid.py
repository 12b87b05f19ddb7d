"""`echoflow train reid`: the privacy gate's ReID network, its anatomy bank and a calibrated tau.

Siamese training on latent pairs (spec 5.3): anchor = a random frame of a random video; with p = 0.5 the
other side is another frame of the same identity (patient in this view; label 1), else a frame of another
identity (label 0). Loss: BCE-with-logits of a linear head on |sigmoid(f_a) - sigmoid(f_b)|, plus
`--kl-weight` x KL(batch statistics of f || N(0, 1)). Only the backbone is saved (the head is not part of
the release). Inputs are scaled latents, as the pipeline's gate sees them.

Then the anatomy bank: sigmoid embeddings of `--bank-frames` evenly spaced frames of every training video
(`OUT/anatomies_<name>.pt`), and tau: the threshold on the Pearson similarity (max over the bank) that best
separates other frames of the training patients (must be rejected) from frames of unseen patients (VAL
split; must pass), written with the measured fractions to `OUT/training/calibration.json`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..reid import DEFAULT_TAU, ReIDConfig, ReIDResNet18, select_tau, similarity_matrix
from .common import Run, add_common_args
from .data import LatentSet
from .scaling_io import open_latent_set


def add_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser, steps=1500, batch_size=64, lr=1e-3, warmup=50, ema=0.0, data_required=False)
    g = parser.add_argument_group("ReID")
    g.add_argument("--latents", required=True, help="latent cache folder from `echoflow train latents`")
    g.add_argument("--scaling", default=None, help="scaling.pt the generative models use (default: fit on TRAIN)")
    g.add_argument("--width", type=int, default=16, help="first-stage channels of the ResNet18 (release: 64)")
    g.add_argument("--embed-dim", type=int, default=128)
    g.add_argument("--kl-weight", type=float, default=1e-3)
    g.add_argument("--head", default="distance", choices=["distance", "linear"],
                   help="siamese head on |sigmoid(f_a) - sigmoid(f_b)|: one shared weight or a free linear layer")
    g.add_argument("--p-same-view-negative", type=float, default=0.75,
                   help="share of negatives drawn from other patients in the anchor's view (harder)")
    g.add_argument("--pairs", default="batch", choices=["batch", "sampled"],
                   help="batch: BCE over every (anchor, other side) pair of the batch, labels from the "
                        "identities, positives and negatives weighted equally (B^2 pairs per step); "
                        "sampled: only the B sampled pairs")
    g.add_argument("--latent-noise", type=float, default=0.05,
                   help="std of Gaussian noise added to training latents (robustness to sampled latents)")
    g.add_argument("--splits", default="TRAIN")
    g.add_argument("--bank-name", default="phantom", help="the bank is written as OUT/anatomies_<name>.pt")
    g.add_argument("--bank-frames", type=int, default=4, help="bank rows per training video")
    g.add_argument("--calib-split", default="VAL", help="unseen patients for tau calibration")
    g.add_argument("--calib-frames", type=int, default=8, help="query frames per video for calibration")
    g.add_argument("--target-rejected", type=float, default=0.95)
    g.add_argument("--target-passed", type=float, default=0.90)


class SiameseHead(nn.Module):
    """logit of "same identity" from |sigmoid(f_a) - sigmoid(f_b)|.

    `linear`: a free linear layer (`fc_end`, the predecessor's head). `distance`: the same layer with one
    shared (negative) weight, i.e. an affine function of the mean absolute difference, so training pulls
    *every* embedding dimension of an identity together, which is what the gate's whole-vector Pearson
    similarity measures."""

    def __init__(self, dim: int, kind: str = "distance"):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.fc_end = nn.Linear(dim, 1)
        else:
            self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
            self.margin = nn.Parameter(torch.tensor(0.1))

    def forward(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        d = (ea - eb).abs()
        if self.kind == "linear":
            return self.fc_end(d).squeeze(-1)
        return self.log_scale.exp() * (self.margin - d.mean(-1))


def feature_kl(f: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, var) || N(0, 1)) of the per-dimension batch statistics, averaged over dimensions."""
    mu, var = f.mean(0), f.var(0, unbiased=False).clamp_min(1e-6)
    return 0.5 * (var + mu.pow(2) - 1.0 - var.log()).mean()


@torch.no_grad()
def embed_frames(reid: ReIDResNet18, data: LatentSet, frame_idx: torch.Tensor, device, chunk: int = 512):
    reid.eval()
    out = [reid.embed(data.frames(part).to(device)).cpu() for part in frame_idx.split(chunk)]
    return torch.cat(out) if out else torch.zeros(0, reid.config.out_channels)


def evenly_spaced_frames(data: LatentSet, per_video: int, shift: float = 0.0) -> torch.Tensor:
    """`per_video` frame indices per video, evenly spaced; `shift` in [0, 1) offsets them by a fraction of
    the spacing (so bank frames and calibration frames differ)."""
    idx = []
    for v in range(len(data)):
        n = int(data.lengths[v])
        k = min(per_video, n)
        pos = ((torch.arange(k) + 0.5 + shift) * n / k).floor().long() % n
        idx.append(int(data.offsets[v]) + pos)
    return torch.cat(idx)


def build_bank(reid: ReIDResNet18, data: LatentSet, frames_per_video: int, device) -> torch.Tensor:
    return embed_frames(reid, data, evenly_spaced_frames(data, frames_per_video), device)


def max_similarity(queries: torch.Tensor, bank: torch.Tensor, kind: str = "pearson") -> torch.Tensor:
    return similarity_matrix(queries, bank, kind).max(dim=1).values


def choose_tau(train_sims: torch.Tensor, new_sims: torch.Tensor, target_rejected: float = 0.95,
               target_passed: float = 0.90) -> dict:
    """The threshold maximising rejected(train) + passed(new) (a frame is rejected when sim >= tau); among
    equally good thresholds the middle of the widest interval, in log(1 - sim) (similarities crowd at 1)."""
    sims = torch.cat([train_sims, new_sims]).double().clamp(max=1.0 - 1e-12)
    cand = torch.unique(sims)
    # thresholds between consecutive values, plus one below all and one above all
    gaps = torch.log1p(-cand)  # decreasing
    mids = torch.expm1(0.5 * (gaps[:-1] + gaps[1:])).neg() if len(cand) > 1 else cand
    below = 1 - (1 - cand[:1]) * 1.5
    above = 1 - (1 - cand[-1:]) * 0.5
    taus = torch.cat([below, mids, above]).clamp(1e-6, 1.0)
    tr = train_sims.double()[None, :]
    nw = new_sims.double()[None, :]
    rejected = (tr >= taus[:, None]).double().mean(1)
    passed = (nw < taus[:, None]).double().mean(1)
    score = rejected + passed
    best = score.max()
    good = torch.nonzero(score >= best - 1e-12).flatten()
    # the longest run of consecutive optimal thresholds, then its middle
    runs, start = [], int(good[0])
    for a, b in zip(good[:-1].tolist(), good[1:].tolist(), strict=True):
        if b != a + 1:
            runs.append((start, a))
            start = b
    runs.append((start, int(good[-1])))
    lo, hi = max(runs, key=lambda r: float(torch.log1p(-taus[r[0]]) - torch.log1p(-taus[r[1]])))
    tau_lo, tau_hi = float(taus[lo]), float(taus[hi])
    tau = 1.0 - math.sqrt(max(1.0 - tau_lo, 1e-12) * max(1.0 - tau_hi, 1e-12))
    rej = float((train_sims >= tau).double().mean())
    pas = float((new_sims < tau).double().mean())
    return {
        "tau": tau,
        "train_rejected_frac": rej,
        "new_passed_frac": pas,
        "meets_targets": bool(rej >= target_rejected and pas >= target_passed),
        "optimal_interval": [tau_lo, tau_hi],
    }


def gate_numbers(train_sims: torch.Tensor, new_sims: torch.Tensor, tau: float) -> dict:
    return {"tau": tau, "train_rejected_frac": float((train_sims >= tau).float().mean()),
            "new_passed_frac": float((new_sims < tau).float().mean())}


def calibrate(reid: ReIDResNet18, train: LatentSet, new: LatentSet | None, bank: torch.Tensor, args, device) -> dict:
    """Similarities of held-in frames (other frames of the bank's videos) and of unseen patients' frames."""
    train_q = embed_frames(reid, train, evenly_spaced_frames(train, args.calib_frames, shift=0.37), device)
    train_sims = max_similarity(train_q, bank)
    info: dict = {"bank_rows": int(bank.shape[0]), "train_queries": int(len(train_sims))}
    q = torch.tensor([0.01, 0.05, 0.5])
    info["train_sim_quantiles_1_5_50"] = [float(v) for v in torch.quantile(train_sims.double(), q.double())]
    if new is None:
        info.update(gate_numbers(train_sims, train_sims.new_zeros(0), DEFAULT_TAU))
        return info
    new_q = embed_frames(reid, new, evenly_spaced_frames(new, args.calib_frames, shift=0.37), device)
    new_sims = max_similarity(new_q, bank)
    info["new_queries"] = int(len(new_sims))
    info["new_sim_quantiles_50_90_99"] = [float(v) for v in torch.quantile(new_sims.double(), torch.tensor([0.5, 0.9, 0.99]).double())]
    info["chosen"] = choose_tau(train_sims, new_sims, args.target_rejected, args.target_passed)
    info["at_default_tau"] = gate_numbers(train_sims, new_sims, DEFAULT_TAU)
    # the predecessor's rule (spec 3.2): 95th percentile of each training embedding's max similarity to
    # held-out real embeddings
    pred_tau = select_tau(train_q, new_q, 95.0)
    info["predecessor_rule"] = gate_numbers(train_sims, new_sims, pred_tau)
    return info


def run(args: argparse.Namespace) -> dict:
    run_ = Run(args, "reid")
    cache, scaler, data = open_latent_set(args.latents, args.scaling, args.splits, run_.out)
    if data.num_identities < 2:
        raise SystemExit("error: ReID training needs at least two identities (patients) in the training split")
    c = data.mean.shape[1]
    reid = ReIDResNet18(ReIDConfig(in_channels=c, out_channels=args.embed_dim, width=args.width))
    head = SiameseHead(args.embed_dim, args.head)
    opt = run_.optimizer(list(reid.parameters()) + list(head.parameters()))
    run_.track({"model": reid, "head": head}, {"opt": opt}, ema=False)
    device = run_.device
    params = list(reid.parameters()) + list(head.parameters())
    for _ in run_.steps():
        for gen in run_.micro_batches():
            za, zb, label, ida, idb = data.sample_pairs(args.batch_size, gen, p_same_view=args.p_same_view_negative,
                                                        with_identities=True)
            if args.latent_noise > 0:
                za = za + args.latent_noise * torch.randn(za.shape, generator=gen)
                zb = zb + args.latent_noise * torch.randn(zb.shape, generator=gen)
            za, zb, label, ida, idb = za.to(device), zb.to(device), label.to(device), ida.to(device), idb.to(device)
            with run_.autocast():
                f = reid(torch.cat([za, zb])).float()
                fa, fb = f.chunk(2)
                ea, eb = torch.sigmoid(fa), torch.sigmoid(fb)
                if args.pairs == "batch":
                    logits = head(ea[:, None], eb[None, :])  # [B, B]
                    target = (ida[:, None] == idb[None, :]).float()
                    pos = target.sum().clamp_min(1.0)
                    neg = (1 - target).sum().clamp_min(1.0)
                    weight = target / pos + (1 - target) / neg
                    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / 2
                    label = target
                else:
                    logits = head(ea, eb)
                    bce = F.binary_cross_entropy_with_logits(logits, label)
                kl = feature_kl(f)
                loss = bce + args.kl_weight * kl
            run_.backward(loss)
        gnorm = run_.step_optimizer(opt, params)
        acc = ((logits > 0).float() == label).float().mean()
        run_.log(loss=run_.step_mean(), bce=bce, kl=kl, acc=acc, gnorm=gnorm)

    if not run_.is_main:  # the bank and tau are computed and written once, by rank 0
        return run_.finish()
    reid.eval()
    bank = build_bank(reid, data, args.bank_frames, device)
    bank_path = Path(args.out) / f"anatomies_{args.bank_name}.pt"
    torch.save(bank.float().contiguous(), str(bank_path))
    new = None
    if args.calib_split:
        try:
            new = LatentSet(cache, args.calib_split, scaler)
        except ValueError:
            new = None
    info = calibrate(reid, data, new, bank, args, device)
    info["bank"] = str(bank_path)
    (run_.state_dir / "calibration.json").write_text(json.dumps(info, indent=2) + "\n")
    chosen = info.get("chosen", {})
    if not args.quiet:
        print(f"reid: bank {tuple(bank.shape)} -> {bank_path}")
        if chosen:
            print(f"reid: tau {chosen['tau']:.6f}: rejects {chosen['train_rejected_frac']:.1%} of training-patient "
                  f"frames, passes {chosen['new_passed_frac']:.1%} of new-patient frames")
    return run_.finish(tau=float(chosen.get("tau", DEFAULT_TAU)),
                       train_rejected_frac=float(chosen.get("train_rejected_frac", float("nan"))),
                       new_passed_frac=float(chosen.get("new_passed_frac", float("nan"))))
