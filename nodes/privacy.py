"""The privacy gate node: only latents that do not re-identify a training patient go on."""

from __future__ import annotations

from .common import (
    CATEGORY,
    GATE_T,
    LATENT_T,
    EchoFlowInputError,
    latent_samples,
    make_latent,
    select_items,
    to_json,
)


class EchoFlowPrivacyGateError(RuntimeError):
    """Nothing passed the gate: the run stops so that no unchecked latent reaches an output."""


class EchoFlowPrivacyGate:
    SEARCH_ALIASES = ["reid", "privacy filter", "memorization", "anonymity"]
    DESCRIPTION = (
        "Checks every latent image against the anatomy bank of real training patients with the ReID model. "
        "Only latents whose highest similarity is strictly below tau pass; the others are dropped. Fails "
        "closed: it stops the run with an error when nothing passes or when the gate does not fit the "
        "latents (other view, other latent shape), and never passes anything unchecked."
    )
    CATEGORY = CATEGORY + "/privacy"
    FUNCTION = "check"
    RETURN_TYPES = (LATENT_T, "STRING", "STRING", "INT")
    RETURN_NAMES = ("passed", "report", "report_json", "passed_count")
    OUTPUT_TOOLTIPS = (
        "Only the latents that passed, in their original order.",
        "Human-readable verdict per item: max similarity, nearest bank row, PASS/REJECT.",
        "The same report as JSON (tau, similarity, bank size, items), e.g. for video metadata.",
        "How many latents passed.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "gate": (GATE_T, {"tooltip": "Privacy gate from EchoFlow Load Privacy Gate (ReID + banks + tau)."}),
                "latents": (LATENT_T, {"tooltip": "Latent images from EchoFlow Sample Image (or VAE Encode)."}),
            }
        }

    def check(self, gate, latents):
        import torch

        from echoflow_models.reid import PrivacyGate

        from . import comfy_bridge as bridge

        if gate is None or getattr(gate, "kind", None) != "reid" or "bank" not in gate.extra:
            raise EchoFlowInputError("gate: connect EchoFlow Load Privacy Gate")
        z = latent_samples(latents)
        view = gate.extra["view"]
        if z.ndim != 4:
            raise EchoFlowInputError(
                f"latents: the privacy gate judges latent images [B, C, h, w], got {tuple(z.shape)}; put the "
                "gate between Sample Image and Animate"
            )
        lat_view = latents.get("view")
        if lat_view and lat_view != "unknown" and lat_view != view:
            raise EchoFlowInputError(
                f"the gate guards {view} but the latents are {lat_view}; load the {lat_view} gate (its ReID "
                "model and anatomy banks) or sample the view this gate guards"
            )
        in_ch = gate.module.config.in_channels
        if z.shape[1] != in_ch:
            raise EchoFlowInputError(
                f"the gate's ReID model takes {in_ch}-channel latents but these have {z.shape[1]}; the gate and "
                "the VAE must come from the same release"
            )
        device = bridge.load_models([gate])
        checker = PrivacyGate(gate.module, gate.extra["bank"].to(device), tau=gate.extra["tau"],
                              similarity=gate.extra["similarity"], view=view)
        progress = bridge.Progress(1, "privacy gate")
        report = checker.check(z.to(device=device, dtype=torch.float32))
        progress.update(1)
        info = report.to_dict()
        info["bank_paths"] = gate.extra.get("bank_paths", [])
        info["reid"] = gate.name
        summary = report.summary()
        passed = report.passed_indices
        if not passed:
            raise EchoFlowPrivacyGateError(
                "privacy gate: no latent passed, nothing is released.\n" + summary
                + "\nTry other seeds (more candidates per batch) and keep tau at the release value."
            )
        out = select_items(latents, passed)
        out["privacy"] = info
        out = make_latent(out.pop("samples"), **out)
        return {
            "ui": {"text": [summary], "echoflow_gate": [info]},
            "result": (out, summary, to_json(info), len(passed)),
        }


NODE_CLASS_MAPPINGS = {"EchoFlowPrivacyGate": EchoFlowPrivacyGate}
NODE_DISPLAY_NAME_MAPPINGS = {"EchoFlowPrivacyGate": "EchoFlow Privacy Gate"}
