"""Facts every layer shares (library, CLI, nodes, dataset maker): one definition each, imported everywhere.

Kept free of heavy imports so that node classes can read them when ComfyUI lists the nodes.
"""

from __future__ import annotations

VIEWS = ("A4C", "PSAX", "PLAX")  # the LIFM's class labels, in label order
IMAGE_SIZE = 112  # EchoFlow frames are 112 x 112 pixels

# Ejection fraction in percent. Every entry point (CLI, library, nodes, dataset maker) accepts this range;
# the released LVFM was trained on EchoNet-Dynamic (EF about 7-97 %), the demo on 10-85 %: requests far
# outside a model's training range are allowed but come out pulled toward it.
EF_MIN, EF_MAX = 0.0, 100.0


def check_ef(value: object, what: str = "EF") -> float:
    """An EF percentage as float; ValueError naming `what` otherwise."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a number (percent), got {value!r}")
    if not EF_MIN <= float(value) <= EF_MAX:
        raise ValueError(f"{what} must be a percentage in [{EF_MIN:g}, {EF_MAX:g}], got {value!r}")
    return float(value)


# Precision names at every edge (CLI options, node widgets, bench) -> torch dtypes.
PRECISION_NAMES = ("fp32", "bf16", "fp16")


def dtype_of(name: str):
    """"fp32" | "bf16" | "fp16" -> the torch dtype; ValueError naming the choices otherwise."""
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {name!r}")
    return table[name]


def pick_device(name: str):
    """"auto" -> CUDA when torch sees a GPU, else the CPU; an explicit device is checked (a CUDA device
    without a GPU, or a name torch does not know, is a ValueError naming --device)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device torch knows; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but torch sees no GPU; use --device cpu")
    return device
