"""ReID: the privacy gate. A ResNet18 on latents, anatomy banks, and the similarity verdict at tau.

The backbone uses torchvision's ResNet18 key names under `model.` (the released `backbone.safetensors`),
with the input conv patched to the latent channels and the head to the embedding width from `config.yaml`.
A generated latent whose embedding is at least `tau` similar to any row of the view's anatomy bank (one
row per real training anatomy) is rejected. The gate fails closed: non-finite similarities reject.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TAU = 0.9997
SIMILARITIES = ("pearson", "cosine")
INPUT_NORMS = ("none", "minmax")


@dataclass
class ReIDConfig:
    in_channels: int = 4
    out_channels: int = 128
    # How a latent is normalised before the backbone. The release does not say; "none" feeds the scaled
    # latent the image sampler returns, "minmax" rescales each latent to [-1, 1] as the predecessor did.
    input_norm: str = "none"
    backbone_target: str = "echoflow.common.models.ResNet18"
    # Channels of the first ResNet stage (stages are width x [1, 2, 4, 8]). The release uses torchvision's 64;
    # the bundled phantom demo uses a narrower one to stay small. Written to config.yaml only when != 64.
    width: int = 64

    def validate(self) -> None:
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"ReID config: input_norm must be one of {INPUT_NORMS}, got {self.input_norm!r}")
        if int(self.width) < 1:
            raise ValueError(f"ReID config: width must be a positive channel count, got {self.width}")
        if "ResNet18" not in self.backbone_target:
            raise ValueError(
                f"ReID config: backbone {self.backbone_target!r} is not supported (only ResNet18 backbones)"
            )

    @classmethod
    def from_yaml_dict(cls, data: dict) -> ReIDConfig:
        """The released OmegaConf layout: backbone.target, model.args.{in_channels,out_channels}."""
        try:
            args = data["model"]["args"]
            target = data["backbone"]["target"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"ReID config.yaml lacks {exc}; expected backbone.target and model.args") from exc
        return cls(
            in_channels=int(args["in_channels"]),
            out_channels=int(args["out_channels"]),
            input_norm=str(data.get("input_norm", args.get("input_norm", "none"))),
            backbone_target=str(target),
            width=int(args.get("width", 64)),
        )

    def to_yaml_dict(self) -> dict:
        args = {"in_channels": self.in_channels, "out_channels": self.out_channels}
        if self.width != 64:
            args["width"] = int(self.width)
        return {
            "backbone": {"target": self.backbone_target, "args": {}},
            "model": {"target": "echoflow.common.models.ContrastiveModel", "args": args},
            "input_norm": self.input_norm,
        }


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + skip)


class ResNet18(nn.Module):
    """torchvision `resnet18` with a patched input conv (latent channels) and head (embedding width)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers, prev = [], width
        for i, stage in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(prev, stage, stride), BasicBlock(stage, stage, 1)))
            prev = stage
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(widths[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ReIDResNet18(nn.Module):
    """`reid(z)` -> raw embedding [B, D]; `reid.embed(z)` -> sigmoid embedding compared with banks."""

    config_class = ReIDConfig
    class_name = "ReID"
    kind = "reid"  # the folder it lives under in a weights root: reid/<name>/

    def __init__(self, config: ReIDConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.model = ResNet18(config.in_channels, config.out_channels, config.width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)

    def normalize_input(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.input_norm == "minmax":
            flat = z.flatten(1)
            lo, hi = flat.min(1).values, flat.max(1).values
            span = (hi - lo).clamp_min(1e-8)
            z = (z - lo.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1) * 2 - 1
        return z

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, C, h, w] -> sigmoid embeddings [B, D] (float32)."""
        return torch.sigmoid(self(self.normalize_input(z)).float())


# ----------------------------------------------------------------------------------------------------
# Similarity and the gate
# ----------------------------------------------------------------------------------------------------


def _unit_rows(x: torch.Tensor, center: bool) -> torch.Tensor:
    x = x.float()
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True)  # a constant row gives NaN, which the gate rejects


def similarity_matrix(queries: torch.Tensor, bank: torch.Tensor, kind: str = "pearson") -> torch.Tensor:
    """[B, D] x [N, D] -> [B, N]: Pearson correlation (centred cosine, as the predecessor) or cosine."""
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
    center = kind == "pearson"
    return _unit_rows(queries, center) @ _unit_rows(bank, center).T


@dataclass
class GateItem:
    max_similarity: float
    nearest_index: int
    passed: bool


@dataclass
class GateReport:
    items: list[GateItem]
    tau: float
    similarity: str
    bank_size: int
    view: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def passed_indices(self) -> list[int]:
        return [i for i, item in enumerate(self.items) if item.passed]

    @property
    def num_passed(self) -> int:
        return len(self.passed_indices)

    def to_dict(self) -> dict:
        return {
            "tau": self.tau,
            "similarity": self.similarity,
            "bank_size": self.bank_size,
            "view": self.view,
            "passed": self.num_passed,
            "total": len(self.items),
            "items": [asdict(item) for item in self.items],
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        lines = [
            f"privacy gate ({self.view or 'any view'}): {self.num_passed}/{len(self.items)} passed "
            f"at tau={self.tau:g} ({self.similarity}, bank of {self.bank_size})"
        ]
        for i, item in enumerate(self.items):
            verdict = "PASS" if item.passed else "REJECT"
            lines.append(
                f"  #{i}: {verdict} max similarity {item.max_similarity:.6f} (nearest bank row {item.nearest_index})"
            )
        return "\n".join(lines)


class PrivacyGate:
    """ReID network + anatomy bank + tau. `check(latents)` -> `GateReport`; nothing passes unless it is
    strictly below tau and finite. The gate judges only latents of `latent_shape` ([C, h, w], the shape the
    bank was embedded from): anything else is refused, since the ReID's global pooling would embed any size
    and the similarity would mean nothing. `privacy.load_gate` builds one from a weights root."""

    def __init__(
        self,
        reid: ReIDResNet18,
        bank: torch.Tensor,
        tau: float = DEFAULT_TAU,
        similarity: str = "pearson",
        view: str | None = None,
        *,
        latent_shape: Sequence[int],
        report_extra: dict | None = None,
    ):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0.0 < float(tau) <= 1.0:
            raise ValueError(f"tau must be a number in (0, 1], got {tau!r}")
        shape = tuple(int(v) for v in latent_shape)
        if len(shape) != 3 or min(shape) < 1 or shape[0] != reid.config.in_channels:
            raise ValueError(
                f"latent_shape must be [C, h, w] with C = the ReID's {reid.config.in_channels} input channels, "
                f"got {list(latent_shape)}"
            )
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"anatomy bank must be a non-empty [N, D] tensor, got shape {tuple(bank.shape)}")
        if bank.shape[1] != reid.config.out_channels:
            raise ValueError(
                f"anatomy bank has {bank.shape[1]}-d rows but the ReID model embeds to "
                f"{reid.config.out_channels}-d; the bank and the ReID model must come from the same release"
            )
        if not torch.isfinite(bank).all():
            raise ValueError("anatomy bank contains NaN or inf rows; it is corrupt")
        flat_rows = (bank.float().std(dim=1) == 0).nonzero().flatten().tolist()
        if similarity == "pearson" and flat_rows:
            raise ValueError(f"anatomy bank rows {flat_rows[:5]} are constant: their correlation is undefined, so the "
                             "gate could not judge against them; the bank is corrupt")
        if bank.min() < 0 or bank.max() > 1:
            raise ValueError(
                f"anatomy bank values span [{float(bank.min()):.3g}, {float(bank.max()):.3g}] but a bank holds "
                "sigmoid ReID embeddings in [0, 1]; it was not made by this ReID model (or is corrupt)"
            )
        self.reid = reid.eval()
        device = next(reid.parameters()).device
        self.bank = bank.float().to(device)
        self.bank_unit = _unit_rows(self.bank, center=similarity == "pearson")
        self.tau = float(tau)
        self.similarity = similarity
        self.view = view
        self.latent_shape = shape
        self.report_extra = dict(report_extra or {})

    @property
    def in_channels(self) -> int:
        return self.reid.config.in_channels

    @torch.no_grad()
    def similarities(self, latents: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """latents [B, C, h, w] -> (max similarity [B], nearest bank index [B]) with one matmul per chunk."""
        if not torch.is_tensor(latents) or not latents.is_floating_point():
            raise ValueError(f"the privacy gate judges real floating-point latents, got "
                             f"{getattr(latents, 'dtype', type(latents).__name__)}")
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"the privacy gate judges latent images [B, {', '.join(map(str, self.latent_shape))}] (the shape "
                f"its anatomy bank was built from) but got {list(latents.shape)}; it cannot judge these. Load "
                "the gate released with the VAE these latents come from, or give latents of that shape"
            )
        device = self.bank.device
        best, index = [], []
        for part in latents.split(chunk):
            emb = self.reid.embed(part.to(device=device, dtype=torch.float32))
            sims = _unit_rows(emb, center=self.similarity == "pearson") @ self.bank_unit.T  # [b, N]
            sims = torch.where(torch.isfinite(sims), sims, torch.full_like(sims, float("inf")))
            value, idx = sims.max(dim=1)
            best.append(value)
            index.append(idx)
        return torch.cat(best).cpu(), torch.cat(index).cpu()

    def check(self, latents: torch.Tensor) -> GateReport:
        best, index = self.similarities(latents)
        items = []
        for value, idx in zip(best.tolist(), index.tolist(), strict=True):
            passed = value == value and value < self.tau  # NaN/inf never pass
            items.append(GateItem(max_similarity=float(value), nearest_index=int(idx), passed=bool(passed)))
        extra = {"latent_shape": list(self.latent_shape), **self.report_extra}
        return GateReport(items, self.tau, self.similarity, int(self.bank.shape[0]), self.view, extra)


def select_tau(train_embeddings: torch.Tensor, heldout_embeddings: torch.Tensor, percentile: float = 95.0,
               similarity: str = "pearson") -> float:
    """The predecessor's rule: for each training embedding, its maximum similarity to any held-out real
    embedding; tau is the given percentile of those maxima."""
    sims = similarity_matrix(train_embeddings, heldout_embeddings, similarity)
    return float(torch.quantile(sims.max(dim=1).values, percentile / 100.0))
