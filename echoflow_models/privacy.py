"""The privacy gate's policy: which ReID model and anatomy banks guard a view, at which tau, for which latents.

This is the one place that decides it, for the CLI, the library, the ComfyUI nodes and the dataset maker:

* `gates.json` at a weights root (optional) maps each view to its ReID folder, its anatomy banks, the tau
  calibrated for those weights and the latent shape [C, h, w] the banks were embedded from. Without it
  the release's own mapping applies (`RELEASED_GATES`, tau 0.9997). A file that does not parse, or a field
  of the wrong kind, is an error naming the file and the field: never a silent default.
* `decide_tau` turns what the user asked for into the tau the gate uses. Nothing asked: the calibrated
  tau. A stricter (lower) tau: taken as it is. A looser (higher) one than calibrated lets more look-alikes
  of training patients through, so it needs an explicit opt-in (`allow_looser`) and is recorded as such.
* `bank_latent_shape` says which latents a gate can judge: a gate refuses latents of any other shape.

Paths in what is reported (`GateSpec.describe`, the gate report) are relative to the weights root, so no
machine's folder layout leaks into videos, reports or datasets.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_anatomy_bank, load_model
from .conventions import IMAGE_SIZE
from .reid import DEFAULT_TAU, PrivacyGate, ReIDResNet18

GATES_NAME = "gates.json"

# The released mapping from the reference demo (spec 1.4): view -> (ReID folder, anatomy banks).
RELEASED_GATES = {
    "A4C": ("dynamic-4f4", ["anatomies_dynamic.pt", "anatomies_ped_a4c.pt"]),
    "PSAX": ("ped_psax-4f4", ["anatomies_ped_psax.pt"]),
    "PLAX": ("lvh-4f4", ["anatomies_lvh.pt"]),
}
_LATENT_NAME = re.compile(r"(\d+)f(\d+)$")  # "dynamic-4f4": 4 channels, 112 / 4 = 28 pixels square


class GateConfigError(CheckpointError):
    """A privacy-gate setting that cannot be used as it is; the message names the file or input and the fix."""


# --------------------------------------------------------------------------------------------------- tau
def check_tau(value: object, what: str = "tau") -> float:
    """A tau as float in (0, 1]; GateConfigError for anything else (bools, strings, NaN, 0, > 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise GateConfigError(f"{what} must be a number in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise GateConfigError(f"{what} must be in (0, 1] (a latent passes only below it), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TauDecision:
    """The tau a gate uses and why: recorded in every gate report."""

    tau: float
    calibrated: float
    calibrated_source: str  # "gates.json" or "release default"
    chosen_by: str  # "calibrated", "user (stricter)", "user (equal)" or "user (LOOSER, opted in)"

    @property
    def looser(self) -> bool:
        return self.tau > self.calibrated

    def to_dict(self) -> dict:
        return {"tau": self.tau, "calibrated_tau": self.calibrated, "calibrated_source": self.calibrated_source,
                "tau_chosen_by": self.chosen_by, "looser_than_calibrated": self.looser}

    def describe(self) -> str:
        if self.chosen_by == "calibrated":
            return f"tau {self.tau:g} (calibrated, {self.calibrated_source})"
        return f"tau {self.tau:g} ({self.chosen_by}; calibrated {self.calibrated:g} from {self.calibrated_source})"


def decide_tau(
    requested: float | None,
    calibrated: float | None,
    *,
    allow_looser: bool = False,
    calibrated_source: str | None = None,
    option: str = "tau",
    opt_in: str = "allow_looser_tau",
) -> TauDecision:
    """The one rule for tau. `requested` None (or 0 from a node widget meaning "calibrated"): the calibrated
    tau, else the release's 0.9997. Lower than calibrated: stricter, always allowed. Higher: refused unless
    `allow_looser`. `option`/`opt_in` name the user's input and the opt-in in error messages."""
    if calibrated is None:
        calibrated, source = DEFAULT_TAU, "release default"
    else:
        calibrated, source = check_tau(calibrated, "calibrated tau"), calibrated_source or GATES_NAME
    if requested is None:
        return TauDecision(calibrated, calibrated, source, "calibrated")
    tau = check_tau(requested, option)
    if abs(tau - calibrated) <= 5e-7 * calibrated:  # the calibrated value as printed (6 digits) is the same tau
        return TauDecision(calibrated, calibrated, source, "user (equal)")
    if tau > calibrated and not allow_looser:
        raise GateConfigError(
            f"{option} {tau:g} is looser than these weights' calibrated tau {calibrated:g} ({source}): more "
            f"look-alikes of training patients would pass. Leave {option} unset to use the calibrated value, "
            f"choose a lower (stricter) one, or set {opt_in} to accept the risk (it is written into the report)"
        )
    return TauDecision(tau, calibrated, source, "user (LOOSER, opted in)" if tau > calibrated else "user (stricter)")


# ------------------------------------------------------------------------------------------- gates.json
@dataclass
class GateSpec:
    """Which ReID folder and banks guard a view under a weights root, and what gates.json says of them."""

    root: Path
    view: str
    reid_folder: Path
    bank_paths: list[Path]
    tau: float | None = None  # calibrated tau (gates.json), None: the release default
    latent_shape: tuple[int, int, int] | None = None  # declared in gates.json
    source: str = "release mapping"

    def relative(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return Path(path).name

    def describe(self) -> dict:
        """What a report may say about this gate: names relative to the weights root, never absolute paths."""
        return {"reid": self.relative(self.reid_folder), "banks": [self.relative(p) for p in self.bank_paths]}


def _field(manifest: Path, view: str, entry: dict, key: str, kind: type, required: bool = True):
    if key not in entry:
        if required:
            raise GateConfigError(f"{manifest}: {view}.{key} is missing; each view needs reid and banks")
        return None
    value = entry[key]
    if kind is float:
        return check_tau(value, f"{manifest}: {view}.{key}")
    if kind is str:
        if not isinstance(value, str) or not value or "/" in value or "\\" in value or value.startswith("."):
            raise GateConfigError(f"{manifest}: {view}.{key} must be a folder or file name, got {value!r}")
        return value
    if kind is list:
        ok = isinstance(value, list) and value and all(isinstance(v, str) and v and "/" not in v and "\\" not in v
                                                       and not v.startswith(".") for v in value)
        if not ok:
            raise GateConfigError(f"{manifest}: {view}.{key} must be a non-empty list of file names under "
                                  f"assets/, got {value!r}")
        return list(value)
    if kind is tuple:
        ok = isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        if not ok:
            raise GateConfigError(f"{manifest}: {view}.{key} must be [C, h, w] (three positive whole numbers), "
                                  f"got {value!r}")
        return tuple(value)
    raise TypeError(kind)


def read_gates_manifest(root: str | Path) -> dict[str, dict] | None:
    """`<root>/gates.json` checked field by field, or None when there is none."""
    manifest = Path(root) / GATES_NAME
    if not manifest.is_file():
        return None
    def no_duplicates(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise GateConfigError(f"{manifest}: {', '.join(twice)} appear(s) twice; which one applies would be a guess")
        return dict(pairs)

    try:
        table = json.loads(manifest.read_text(), object_pairs_hook=no_duplicates)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateConfigError(f"{manifest}: not valid JSON ({exc}); fix the file or remove it to use the "
                              "release's mapping") from exc
    if not isinstance(table, dict) or not table:
        raise GateConfigError(f"{manifest}: must be an object mapping views to {{reid, banks, tau}}")
    out = {}
    for view, entry in table.items():
        if not isinstance(entry, dict):
            raise GateConfigError(f"{manifest}: {view} must be an object with reid, banks and tau")
        unknown = sorted(set(entry) - {"reid", "banks", "tau", "latent_shape"})
        if unknown:
            raise GateConfigError(f"{manifest}: {view} has unknown field(s) {', '.join(unknown)}; expected reid, "
                                  "banks, tau, latent_shape")
        out[view] = {
            "reid": _field(manifest, view, entry, "reid", str),
            "banks": _field(manifest, view, entry, "banks", list),
            "tau": _field(manifest, view, entry, "tau", float, required=False),
            "latent_shape": _field(manifest, view, entry, "latent_shape", tuple, required=False),
        }
    return out


def gate_spec(root: str | Path, view: str) -> GateSpec:
    """Which ReID folder and anatomy banks guard `view` under this weights root; every file must exist."""
    root = Path(root)
    table = read_gates_manifest(root)
    if table is not None:
        if view not in table:
            raise GateConfigError(f"{root / GATES_NAME} has no privacy gate for view {view!r} (has "
                                  f"{', '.join(table)}); add one or use a view it guards")
        entry = table[view]
        spec = GateSpec(root, view, root / "reid" / entry["reid"], [root / "assets" / b for b in entry["banks"]],
                        entry["tau"], entry["latent_shape"], GATES_NAME)
    elif view in RELEASED_GATES:
        reid, banks = RELEASED_GATES[view]
        spec = GateSpec(root, view, root / "reid" / reid, [root / "assets" / b for b in banks])
    else:
        raise GateConfigError(f"no privacy gate known for view {view!r}")
    missing = [str(p) for p in [spec.reid_folder, *spec.bank_paths] if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"privacy gate for {view} is incomplete under {root}: missing {', '.join(missing)}. Without the "
            "ReID model and its anatomy banks no latent can be released."
        )
    return spec


def calibrated_tau(root: str | Path | None, view: str) -> tuple[float | None, str]:
    """(calibrated tau or None, where it comes from) for `view` under a weights root."""
    table = read_gates_manifest(root) if root is not None else None
    if table is not None and view in table and table[view]["tau"] is not None:
        return table[view]["tau"], GATES_NAME
    return None, "release default"


# ---------------------------------------------------------------------------------------- latent shape
def bank_latent_shape(reid: ReIDResNet18, reid_name: str, declared: tuple[int, int, int] | None = None
                      ) -> tuple[int, int, int]:
    """The [C, h, w] latents a ReID model and its banks judge: `declared` (gates.json `latent_shape`), else
    the release's naming (`dynamic-4f4`: 4 channels, 112 / 4 = 28). Unknown: refused, since a ReID with
    global pooling would happily embed latents of any size and the verdict would mean nothing."""
    channels = reid.config.in_channels
    if declared is not None:
        shape = tuple(int(v) for v in declared)
    else:
        match = _LATENT_NAME.search(reid_name)
        if not match or IMAGE_SIZE % int(match.group(2)):
            raise GateConfigError(
                f"cannot tell which latent size the anatomy banks of ReID {reid_name!r} were built from; add "
                f'"latent_shape": [{channels}, h, w] to its view in {GATES_NAME} (e.g. [4, 28, 28] for avae-4f4)'
            )
        size = IMAGE_SIZE // int(match.group(2))
        shape = (int(match.group(1)), size, size)
    if shape[0] != channels:
        raise GateConfigError(f"ReID {reid_name!r} takes {channels}-channel latents but its banks are declared "
                              f"for {list(shape)}; the ReID model and the banks must come from the same release")
    return shape  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- loading
def load_gate(
    spec: GateSpec,
    tau: float | None = None,
    *,
    allow_looser_tau: bool = False,
    similarity: str = "pearson",
    device: str | torch.device = "cpu",
) -> PrivacyGate:
    """A `PrivacyGate` for `spec.view` with the tau `decide_tau` picks; the report records the decision."""
    decision = decide_tau(tau, spec.tau, allow_looser=allow_looser_tau, calibrated_source=spec.source)
    reid = load_model(spec.reid_folder, device=device, dtype=torch.float32)
    bank = torch.cat([load_anatomy_bank(p) for p in spec.bank_paths], dim=0)
    shape = bank_latent_shape(reid, spec.reid_folder.name, spec.latent_shape)
    try:
        return PrivacyGate(reid, bank, decision.tau, similarity, spec.view, latent_shape=shape,
                           report_extra={**decision.to_dict(), **spec.describe()})
    except ValueError as exc:
        raise GateConfigError(f"privacy gate for {spec.view} under {spec.root}: {exc}") from exc
