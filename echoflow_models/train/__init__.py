"""`echoflow train ...`: training for every EchoFlow network on an EchoNet-Dynamic layout folder.

    echoflow train dataset --out DS --patients 100                       phantom data (EchoNet layout)
    echoflow train vae     --data DS --out runs/vae                      A-VAE (L1 + KL + PatchGAN hinge)
    echoflow train latents --data DS --vae runs/vae --out runs/latents --scaling-out runs/scaling.pt
    echoflow train lifm    --latents runs/latents --scaling runs/scaling.pt --out runs/lifm
    echoflow train reid    --latents runs/latents --scaling runs/scaling.pt --out runs/reid
    echoflow train lvfm    --latents runs/latents --scaling runs/scaling.pt --out runs/lvfm
    echoflow train ef      --data DS --out runs/ef                       EF regressor (evaluation)
    echoflow train seg     --data DS --vae runs/vae --out runs/seg       LV segmentation (EF by segmentation)
    echoflow train all     --data DS --work runs --out my-weights       all of it + a weights root

From Python: `echoflow_models.train.train("lifm", latents=..., out=..., steps=100)` runs one stage with
the command's defaults and returns its summary dict.

Data-parallel (every stage but dataset and all): `torchrun --nproc-per-node N -m echoflow_models train STAGE ...`
(one process per GPU, NCCL; gloo on CPUs); `--global-batch G` keeps G samples per step on fewer GPUs.
"""

from __future__ import annotations

import argparse
import importlib

STAGE_MODULES = {
    "dataset": ("dataset", "write a phantom training dataset (EchoNet layout) and its recipe"),
    "vae": ("vae", "train the A-VAE (L1 + KL + patch discriminator)"),
    "latents": ("latents", "encode a dataset with a trained A-VAE into a latent cache; fit scaling.pt"),
    "lifm": ("lifm", "train the latent image flow (SegDiT) on a latent cache"),
    "reid": ("reid", "train the ReID privacy network; build the anatomy bank; calibrate tau"),
    "lvfm": ("lvfm", "train the latent video flow (STDiT) on a latent cache"),
    "ef": ("ef", "train the 3-D CNN EF regressor on pixel videos"),
    "seg": ("seg", "train the LV segmentation network (EF by segmentation) on traced frames"),
    "all": ("all", "train every network in order and export a weights root in the released layout"),
}


def _module(stage: str):
    return importlib.import_module(f"{__name__}.{STAGE_MODULES[stage][0]}")


def train(stage: str, **options) -> dict:
    """Run one training stage with its command-line defaults overridden by `options`."""
    from .common import namespace_for

    if stage not in STAGE_MODULES:
        raise ValueError(f"unknown training stage {stage!r}; choose one of {', '.join(STAGE_MODULES)}")
    from .distributed import shutdown_distributed

    module = _module(stage)
    try:
        return module.run(namespace_for(module.add_args, **options))
    finally:
        shutdown_distributed()


def _cmd(args: argparse.Namespace) -> int:
    from ..options import check_count, physical_cores

    if getattr(args, "threads", None) is None:
        # The command's default: the physical cores (split between parallel stages of `train all`). From
        # Python (`train(...)`) threads stay None and torch's global setting is left alone.
        args.threads = max(1, physical_cores() // max(1, int(getattr(args, "jobs", 1) or 1)))
    check_count(args.threads, "--threads", 1, 1024)
    from .distributed import shutdown_distributed

    module = _module(args.train_stage)
    try:
        module.run(args)
    finally:
        shutdown_distributed()
    return 0


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the networks on an EchoNet-Dynamic layout folder (dataset|vae|latents|lifm|reid|lvfm|ef|seg|all)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = parser.add_subparsers(dest="train_stage", required=True, metavar="STAGE")
    for stage, (_, help_text) in STAGE_MODULES.items():
        module = _module(stage)
        sub = stages.add_parser(stage, help=help_text, description=(module.__doc__ or help_text),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(sub)
        sub.set_defaults(func=_cmd)
