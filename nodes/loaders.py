"""Loader nodes: A-VAE (+ scaling.pt), LIFM, LVFM, privacy gate (ReID + anatomy banks), EF regressor, LV
segmentation."""

from __future__ import annotations

from pathlib import Path

import torch

from . import bridge
from .common import CATEGORY, EF_T, GATE_T, LIFM_T, LVFM_T, SEG_T, VAE_T, VIEWS, EchoFlowInputError

LOADERS = CATEGORY + "/loaders"

PRECISION_TIP = (
    "Weights dtype. auto: ComfyUI's choice for this device (fp32 on the CPU; bf16/fp16 on GPUs that "
    "support them). fp16 can overflow to black frames on some models; fp32 is the safe fallback."
)


def _fingerprint(kind: str, name: str) -> str:
    """IS_CHANGED value: the resolved folder and its files' sizes and times, so replacing weights under the
    same name reloads them (ComfyUI otherwise keeps the cached model)."""
    try:
        folder = bridge.resolve_model(kind, name)
    except (FileNotFoundError, OSError, ValueError):
        return f"missing:{name}"  # the load itself reports the error
    parts = [str(folder)]
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _model_input(kind: str, what: str) -> tuple:
    return (
        bridge.list_models(kind),
        {
            "default": bridge.DEMO,
            "tooltip": f"{what}. 'demo' is the small bundled phantom model; released weights "
            f"(HReynaud/EchoFlow) go in ComfyUI/models/echoflow/{kind}/<name>/ and are listed here.",
        },
    )


def _precision_input(default: str = "auto") -> tuple:
    return (list(bridge.PRECISIONS), {"default": default, "tooltip": PRECISION_TIP})


def _load(folder: Path, kind: str, name: str, precision: str, role: str, **extra):
    from echoflow_models import load_model

    dtype = bridge.pick_dtype(precision, role)
    module = load_model(folder, device="cpu", dtype=torch.float32)
    if dtype == torch.float16 and getattr(getattr(module, "config", None), "force_upcast", False):
        bridge.log.info("EchoFlow %s %s: config asks for force_upcast, running it in fp32", kind, name)
        dtype = torch.float32  # diffusers' rule for VAEs that overflow in fp16
    return bridge.ManagedModel(module, dtype, kind, name, folder=str(folder), **extra)


class EchoFlowLoadVAE:
    SEARCH_ALIASES = ["echo vae", "avae", "autoencoder", "ultrasound"]
    DESCRIPTION = (
        "Loads EchoFlow's adversarial VAE (A-VAE, diffusers AutoencoderKL layout) and the per-channel latent "
        "scaling (scaling.pt) that the flow models were trained with. Connect it to VAE Decode / Encode."
    )
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (VAE_T,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The A-VAE with its latent scaling, managed by ComfyUI's model memory.",)

    @classmethod
    def IS_CHANGED(cls, vae_name, **_inputs):
        return _fingerprint("vae", vae_name)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae_name": _model_input("vae", "A-VAE folder (the release's avae-4f4 matches its flow models)"),
                "scaling": (
                    bridge.list_assets("scaling"),
                    {
                        "default": bridge.AUTO,
                        "tooltip": "Latent scaling statistics (scaling.pt: per-channel mean/std). 'auto' uses "
                        "assets/scaling.pt next to the chosen VAE (the release layout).",
                    },
                ),
                "precision": _precision_input(),
            }
        }

    def load(self, vae_name, scaling, precision):
        from echoflow_models.scaling import LatentScaler

        folder = bridge.resolve_model("vae", vae_name)
        if scaling == bridge.AUTO:
            path = bridge.model_root_of(folder) / "assets" / "scaling.pt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"scaling 'auto': no assets/scaling.pt next to {folder} ({path}); choose a scaling file"
                )
        else:
            path = bridge.resolve_asset(scaling)
        scaler = LatentScaler.load(path)
        vae = _load(folder, "vae", vae_name, precision, "vae", scaler=scaler, scaling_path=str(path))
        channels = getattr(vae.module, "latent_channels", scaler.channels)
        if scaler.channels != channels:
            raise EchoFlowInputError(
                f"scaling: {path} has {scaler.channels} channels but the VAE {vae_name!r} has {channels} "
                "latent channels; use the scaling.pt released with that VAE"
            )
        return (vae,)


class EchoFlowLoadImageFlow:
    SEARCH_ALIASES = ["lifm", "echo image model", "ultrasound"]
    DESCRIPTION = (
        "Loads an EchoFlow latent image flow model (LIFM, SegDiT): generates latent echo frames for a view "
        "(A4C/PSAX/PLAX), optionally guided by a left-ventricle mask."
    )
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (LIFM_T,)
    RETURN_NAMES = ("lifm",)
    OUTPUT_TOOLTIPS = ("The LIFM, for EchoFlow Sample Image.",)

    @classmethod
    def IS_CHANGED(cls, model_name, **_inputs):
        return _fingerprint("lifm", model_name)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": _model_input("lifm", "Latent image flow model folder"),
                "precision": _precision_input(),
            }
        }

    def load(self, model_name, precision):
        folder = bridge.resolve_model("lifm", model_name)
        return (_load(folder, "lifm", model_name, precision, "flow"),)


class EchoFlowLoadVideoFlow:
    SEARCH_ALIASES = ["lvfm", "echo video model", "ultrasound"]
    DESCRIPTION = (
        "Loads an EchoFlow latent video flow model (LVFM, STDiT): animates a latent image into a latent "
        "video conditioned on the ejection fraction."
    )
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (LVFM_T,)
    RETURN_NAMES = ("lvfm",)
    OUTPUT_TOOLTIPS = ("The LVFM, for EchoFlow Animate.",)

    @classmethod
    def IS_CHANGED(cls, model_name, **_inputs):
        return _fingerprint("lvfm", model_name)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": _model_input("lvfm", "Latent video flow model folder"),
                "precision": _precision_input(),
            }
        }

    def load(self, model_name, precision):
        folder = bridge.resolve_model("lvfm", model_name)
        return (_load(folder, "lvfm", model_name, precision, "flow"),)


def _gate_roots(reid_folder: Path) -> list[Path]:
    """Weights roots whose gates.json / assets/ may belong to this ReID: its own root first, then the user's
    model roots. The bundled demo root only for the demo's own ReID: a released ReID must never be paired
    with the demo's phantom bank (it would judge against the wrong patients and pass everything)."""
    own = bridge.model_root_of(reid_folder).resolve()
    demo = bridge.demo_root()
    demo = demo.resolve() if demo is not None else None
    if own == demo:
        return [own]
    unique: list[Path] = []
    for root in (own, *(r.resolve() for r in bridge.model_roots())):
        if root != demo and root not in unique:
            unique.append(root)
    return unique


def _own_gate_entry(reid_folder: Path, view: str) -> tuple[dict | None, Path | None]:
    """The first gates.json entry for `view` that names this ReID (its own weights root first, then the
    user's model roots) and the root it is in: the source of the calibrated tau, the banks and their latent
    shape. A malformed gates.json is an error naming the file."""
    from echoflow_models.privacy import read_gates_manifest

    for root in _gate_roots(reid_folder):
        entry = (read_gates_manifest(root) or {}).get(view)
        if entry is not None and entry["reid"] == reid_folder.name:
            return entry, root
    return None, None


def _auto_banks(reid_folder: Path, view: str) -> list[Path]:
    """The anatomy banks that belong to this ReID for ``view``: the banks of a ``gates.json`` entry that names
    it (`_own_gate_entry`), else the release's table, found in the assets/ of the ReID's own root first, then
    of the user's model roots (never the demo's, for a ReID that is not the demo's)."""
    from echoflow_models.privacy import RELEASED_GATES

    roots = _gate_roots(reid_folder)
    entry, entry_root = _own_gate_entry(reid_folder, view)
    if entry is not None:
        names = list(entry["banks"])
        roots = [entry_root, *[r for r in roots if r != entry_root]]
    else:
        if view not in RELEASED_GATES:
            raise EchoFlowInputError(f"no anatomy banks known for view {view!r}; choose a bank file")
        names = list(RELEASED_GATES[view][1])
    paths, missing = [], []
    for name in names:
        found = next((r / "assets" / name for r in roots if (r / "assets" / name).is_file()), None)
        (paths.append(found) if found else missing.append(name))
    if missing:
        raise FileNotFoundError(
            f"bank 'auto' for {view}: anatomy bank(s) {', '.join(missing)} not found in any assets/ folder "
            f"({', '.join(str(r / 'assets') for r in roots)}). Without them no latent can be released; put the "
            "release's anatomies_*.pt in ComfyUI/models/echoflow/assets/ or choose bank files explicitly."
        )
    return paths


def _display_path(path: Path) -> str:
    """An asset or model path as the loaders list it (relative to its model root, demo/... for the bundled
    weights): what reports may show, never the machine's absolute path."""
    path = Path(path).resolve()
    demo = bridge.demo_root()
    for root, prefix in [*((r, "") for r in bridge.model_roots()), *(((demo, bridge.DEMO_PREFIX),) if demo else ())]:
        try:
            return prefix + path.relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    return path.name


class EchoFlowLoadPrivacyGate:
    SEARCH_ALIASES = ["reid", "re-identification", "anatomy bank", "privacy"]
    DESCRIPTION = (
        "Loads the privacy gate for one view: a re-identification (ReID) network and the anatomy bank(s) "
        "of real training patients it compares against. A generated latent passes only when its highest "
        "similarity to every bank row is strictly below tau."
    )
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (GATE_T,)
    RETURN_NAMES = ("gate",)
    OUTPUT_TOOLTIPS = ("The privacy gate, for EchoFlow Privacy Gate.",)

    @classmethod
    def IS_CHANGED(cls, reid_name, **_inputs):
        return _fingerprint("reid", reid_name)

    @classmethod
    def INPUT_TYPES(cls):
        banks = bridge.list_assets("anatomies")
        extra_banks = ["none", *[b for b in banks if b != bridge.AUTO]]
        return {
            "required": {
                "reid_name": _model_input("reid", "ReID model folder (config.yaml + backbone.safetensors)"),
                "view": (list(VIEWS), {"default": "A4C", "tooltip": "The view this gate guards; latents of "
                                       "another view are refused."}),
                "bank": (banks, {"default": bridge.AUTO, "tooltip": "Anatomy bank (anatomies_*.pt: one ReID "
                                 "embedding per real training anatomy). 'auto' takes the banks the release "
                                 "pairs with this view (A4C: dynamic + ped_a4c) next to the ReID folder."}),
                "tau": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001, "round": 0.000001,
                                  "tooltip": "Similarity threshold: a latent passes only if its maximum "
                                  "similarity to the bank is strictly below tau. 0 = the weights' calibrated "
                                  "tau (gates.json beside the ReID model, else the release's 0.9997), shown "
                                  "on the node after a run. A lower value is stricter; a higher one than "
                                  "calibrated needs allow_looser_tau."}),
                "allow_looser_tau": ("BOOLEAN", {"default": False, "tooltip": "Accept a tau above the calibrated "
                                                 "one: more look-alikes of training patients pass. Recorded in "
                                                 "the privacy report."}),
                "similarity": (["pearson", "cosine"], {"default": "pearson", "tooltip": "Similarity of ReID "
                                                       "embeddings: Pearson correlation (the reference) or "
                                                       "cosine."}),
            },
            "optional": {
                "extra_bank": (extra_banks, {"default": "none", "tooltip": "A second anatomy bank, concatenated "
                                             "to the first (e.g. anatomies_ped_a4c.pt for A4C)."}),
                "extra_bank_2": (extra_banks, {"default": "none", "tooltip": "A third anatomy bank, "
                                               "concatenated too."}),
            },
        }

    def load(self, reid_name, view, bank, tau, similarity, allow_looser_tau=False, extra_bank="none",
             extra_bank_2="none"):
        from echoflow_models.checkpoint import load_anatomy_bank
        from echoflow_models.privacy import GateConfigError, bank_latent_shape, decide_tau

        if view not in VIEWS:
            raise EchoFlowInputError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        folder = bridge.resolve_model("reid", reid_name)
        own, _root = _own_gate_entry(folder, view)
        requested = None if isinstance(tau, int | float) and not isinstance(tau, bool) and tau == 0 else tau
        try:
            decision = decide_tau(requested, own["tau"] if own else None, allow_looser=bool(allow_looser_tau),
                                  calibrated_source="gates.json", option="tau", opt_in="allow_looser_tau")
        except GateConfigError as exc:
            raise EchoFlowInputError(str(exc)) from None
        if bank == bridge.AUTO:
            paths = _auto_banks(folder, view)
        else:
            paths = [bridge.resolve_asset(bank)]
        for extra in (extra_bank, extra_bank_2):
            if extra and extra != "none":
                paths.append(bridge.resolve_asset(extra))
        if len(set(paths)) != len(paths):
            raise EchoFlowInputError("the same anatomy bank is selected twice; each bank counts once")
        bank_t = torch.cat([load_anatomy_bank(p) for p in paths], dim=0)
        reid = _load(folder, "reid", reid_name, "fp32", "reid")
        out_dim = reid.module.config.out_channels
        if bank_t.shape[1] != out_dim:
            raise EchoFlowInputError(
                f"anatomy bank rows are {bank_t.shape[1]}-d but the ReID model {reid_name!r} embeds to "
                f"{out_dim}-d; the bank and the ReID model must come from the same release"
            )
        try:
            shape = bank_latent_shape(reid.module, folder.name, own["latent_shape"] if own else None)
        except GateConfigError as exc:
            raise EchoFlowInputError(str(exc)) from None
        reid.extra.update(bank=bank_t, tau=decision.tau, tau_decision=decision.to_dict(), similarity=similarity,
                          view=view, latent_shape=shape, banks=[_display_path(p) for p in paths])
        text = (f"{view} gate: {decision.describe()}; {bank_t.shape[0]} training anatomies "
                f"({', '.join(reid.extra['banks'])}); judges latents {list(shape)}")
        return {"ui": {"text": [text], "echoflow_gate_tau": [decision.to_dict()]}, "result": (reid,)}


class EchoFlowLoadEFRegressor:
    SEARCH_ALIASES = ["ejection fraction", "ef model"]
    DESCRIPTION = (
        "Loads an ejection-fraction regressor (video frames -> EF %), used by EchoFlow Estimate EF to check "
        "that generated videos show the EF they were conditioned on."
    )
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (EF_T,)
    RETURN_NAMES = ("ef_model",)
    OUTPUT_TOOLTIPS = ("The EF regressor, for EchoFlow Estimate EF.",)

    @classmethod
    def IS_CHANGED(cls, model_name, **_inputs):
        return _fingerprint("ef", model_name)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": _model_input("ef", "EF regressor folder"),
                "precision": _precision_input(),
            }
        }

    def load(self, model_name, precision):
        folder = bridge.resolve_model("ef", model_name)
        return (_load(folder, "ef", model_name, precision, "ef"),)


class EchoFlowLoadLVSegmentation:
    SEARCH_ALIASES = ["lv segmentation", "left ventricle", "unet", "echonet"]
    DESCRIPTION = (
        "Loads a left-ventricle segmentation network (seg/<name>/, a small 2-D U-Net): outlines the LV cavity "
        "in every frame, for EchoFlow Segment LV, EF by segmentation in Estimate EF, and LV labels in Save "
        "EchoNet Dataset."
    )
    CATEGORY = LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (SEG_T,)
    RETURN_NAMES = ("seg_model",)
    OUTPUT_TOOLTIPS = ("The LV segmentation model, for EchoFlow Segment LV / Estimate EF / Save EchoNet "
                       "Dataset.",)

    @classmethod
    def IS_CHANGED(cls, model_name, **_inputs):
        return _fingerprint("seg", model_name)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": _model_input("seg", "LV segmentation model folder"),
                "precision": _precision_input(),
            }
        }

    def load(self, model_name, precision):
        folder = bridge.resolve_model("seg", model_name)
        return (_load(folder, "seg", model_name, precision, "seg"),)


NODE_CLASS_MAPPINGS = {
    "EchoFlowLoadVAE": EchoFlowLoadVAE,
    "EchoFlowLoadImageFlow": EchoFlowLoadImageFlow,
    "EchoFlowLoadVideoFlow": EchoFlowLoadVideoFlow,
    "EchoFlowLoadPrivacyGate": EchoFlowLoadPrivacyGate,
    "EchoFlowLoadEFRegressor": EchoFlowLoadEFRegressor,
    "EchoFlowLoadLVSegmentation": EchoFlowLoadLVSegmentation,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoFlowLoadVAE": "EchoFlow Load VAE",
    "EchoFlowLoadImageFlow": "EchoFlow Load Image Flow",
    "EchoFlowLoadVideoFlow": "EchoFlow Load Video Flow",
    "EchoFlowLoadPrivacyGate": "EchoFlow Load Privacy Gate",
    "EchoFlowLoadEFRegressor": "EchoFlow Load EF Regressor",
    "EchoFlowLoadLVSegmentation": "EchoFlow Load LV Segmentation",
}
