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
