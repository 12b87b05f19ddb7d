"""Models built from release-sized configs have exactly the keys and shapes of `manifests.json`."""

from __future__ import annotations

import json

import pytest

from echoflow_models import lifm, lvfm, vae
from echoflow_models.checkpoint import build_model
from echoflow_models.reid import ReIDConfig, ReIDResNet18

# The size presets and release layouts beside the networks must build exactly the manifests' keys and shapes.
CONFIGS = {
    "lifm_dit_s2": ("SegDiTTransformer2DModel", {**lifm.RELEASE_LAYOUT, **lifm.SIZE_PRESETS["DiT-S/2"]}),
    "lvfm_stdit_s2": ("DiffuserSTDiT", {**lvfm.RELEASE_LAYOUT, **lvfm.SIZE_PRESETS["STDiT-S/2"]}),
    # the avae-16f8 config.json of the release (spec 1.2): its preset plus the keys that do not set a size
    "vae_avae_16f8": ("AutoencoderKL", {
        **vae.SIZE_PRESETS["avae-16f8"], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "sample_size": 512,
        "scaling_factor": 1.33, "mid_block_add_attention": True,
    }),
}


@pytest.fixture(scope="module")
def manifests(fixtures_dir):
    return json.loads((fixtures_dir / "manifests.json").read_text())


def shapes(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_release_sized_models_have_manifest_keys(manifests, name):
    class_name, config = CONFIGS[name]
    got = shapes(build_model(class_name, config))
    assert list(got) == list(manifests[name]) or set(got) == set(manifests[name])
    assert got == manifests[name]


def test_reid_has_torchvision_resnet18_keys(manifests):
    assert shapes(ReIDResNet18(ReIDConfig(in_channels=4, out_channels=128))) == manifests["reid_resnet18_4to128"]
