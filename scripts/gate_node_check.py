"""How the shipped workflows' privacy gate judges real phantom frames, through the ComfyUI node classes.

    python -m scripts.gate_node_check [--workflow workflows/api/echoflow_full_pipeline.json] [--threads 1]

Training-patient frames (the patients the demo's anatomy bank was built from) and frames of new patients
are rendered exactly as `python -m research evaluate` renders them (24 patients x 4 frames each, seed 0), encoded
with the EchoFlow VAE Encode node and judged by the Privacy Gate node behind a Load Privacy Gate node set
up with the workflow's own inputs. Prints the pass/reject counts per set, once with the workflow's tau and
once with the release's 0.9997 (which a user must now opt into as looser than calibrated).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import headless
from echoflow_models.phantom import PatientAnatomy, render_video
from echoflow_models.weights import bundled_weights_root
from research.evaluate import EVAL_NEW_PATIENT_SEED, EvalSizes, training_patients

ROOT = Path(__file__).resolve().parent.parent


def patient_frames(patients: list[PatientAnatomy], frames: int, seed: int) -> torch.Tensor:
    """uint8 frames as `evaluate._patient_latents` picks them -> ComfyUI IMAGE [N, 112, 112, 3] in 0..1."""
    rng = np.random.default_rng([seed, 0xD])
    out = []
    for anatomy in patients:
        video = render_video(anatomy, ef=float(rng.uniform(15, 80)), num_frames=frames * 8,
                             seed=int(rng.integers(0, 2**31 - 1)))
        out.append(torch.from_numpy(np.ascontiguousarray(video.frames[::8][:frames])))
    gray = torch.cat(out).float() / 255.0
    return gray[..., None].expand(-1, -1, -1, 3).contiguous()


def judge(M, gate_inputs: dict, latents: dict) -> tuple[int, int]:
    gate = M["EchoFlowLoadPrivacyGate"]().load(**gate_inputs)["result"][0]
    try:
        passed = M["EchoFlowPrivacyGate"]().check(gate, latents)["result"][3]
    except RuntimeError as exc:  # the node fails closed when nothing passes
        if "no latent passed" not in str(exc):
            raise
        passed = 0
    return passed, latents["samples"].shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=str(ROOT / "workflows" / "api" / "echoflow_full_pipeline.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    M = headless.load_pack(ROOT).NODE_CLASS_MAPPINGS
    prompt = json.loads(Path(args.workflow).read_text())
    node = next(n for n in prompt.values() if n["class_type"] == "EchoFlowLoadPrivacyGate")
    gate_inputs = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
    view = gate_inputs["view"]
    sizes = EvalSizes()
    root = bundled_weights_root()
    train = [p for p in training_patients(root) if p.view == view][: sizes.privacy_patients]
    rng = np.random.default_rng([EVAL_NEW_PATIENT_SEED, args.seed])
    new = [PatientAnatomy.sample(int(rng.integers(1, 2**31 - 1)), view) for _ in range(sizes.privacy_patients)]

    (vae,) = M["EchoFlowLoadVAE"]().load("demo", "auto", "fp32")
    encode = M["EchoFlowVAEEncode"]()
    sets = {
        "training-patient frames": encode.encode(vae, patient_frames(train, sizes.privacy_frames, args.seed), view,
                                                 112)[0],
        "new-patient frames": encode.encode(vae, patient_frames(new, sizes.privacy_frames, args.seed + 1), view,
                                            112)[0],
    }
    settings = {f"workflow ({Path(args.workflow).name}: tau={gate_inputs['tau']:g}, "
                f"allow_looser_tau={gate_inputs['allow_looser_tau']})": gate_inputs,
                "release tau 0.9997 (opted in as looser)": {**gate_inputs, "tau": 0.9997, "allow_looser_tau": True}}
    results = {}
    for label, inputs in settings.items():
        shown = M["EchoFlowLoadPrivacyGate"]().load(**inputs)["ui"]["text"][0]
        print(f"{label}\n  {shown}")
        for name, latents in sets.items():
            passed, total = judge(M, inputs, latents)
            results[f"{label} / {name}"] = {"passed": passed, "rejected": total - passed, "total": total}
            print(f"  {name}: {passed} of {total} pass, {total - passed} rejected")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
