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

        from . import bridge

        if gate is None or getattr(gate, "kind", None) != "reid" or "latent_shape" not in gate.extra:
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
        shape = tuple(gate.extra["latent_shape"])
        if tuple(z.shape[1:]) != shape:
            raise EchoFlowInputError(
                f"latents: the gate judges latent images [B, {', '.join(map(str, shape))}] (the shape its anatomy "
                f"bank was built from) but these are {list(z.shape)}; it cannot judge them. Use the VAE and image "
                "model released with this gate, or load the gate that matches these latents"
            )
        if not bool(torch.isfinite(z).all()):
            raise EchoFlowPrivacyGateError("latents hold NaN or inf values: the image model's weights are broken "
                                           "or its precision overflows (try fp32); nothing is released")
        device = bridge.load_models([gate], memory_required=bridge.activation_memory(gate, min(256, z.shape[0])))
        try:
            checker = PrivacyGate(gate.module, gate.extra["bank"].to(device), tau=gate.extra["tau"],
                                  similarity=gate.extra["similarity"], view=view, latent_shape=shape,
                                  report_extra={**gate.extra["tau_decision"], "reid": gate.name,
                                                "banks": gate.extra["banks"]})
        except ValueError as exc:
            raise EchoFlowInputError(f"gate: {exc}") from None
        progress = bridge.Progress(1, "privacy gate")
        report = checker.check(z.to(device=device, dtype=torch.float32))
        progress.update(1)
        info = report.to_dict()
        seeds = latents.get("seeds")
        if isinstance(seeds, list) and len(seeds) == len(info["items"]):
            for item, seed in zip(info["items"], seeds, strict=True):
                item["seed"] = seed
        summary = report.summary()
        passed = report.passed_indices
        if not passed:
            raise EchoFlowPrivacyGateError(
                "privacy gate: no latent passed, nothing is released.\n" + summary
                + "\nTry other seeds or a larger batch (more candidates). Do not raise tau above the calibrated "
                f"value ({info.get('calibrated_tau', 'see gates.json')}) to get through: below it these latents "
                "would re-identify training patients."
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
