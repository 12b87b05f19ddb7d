"""Models built from release-sized configs have exactly the keys and shapes of `manifests.json`."""

from __future__ import annotations

import json

import pytest

from echoflow_models.checkpoint import build_model
from echoflow_models.reid import ReIDConfig, ReIDResNet18

CONFIGS = {
    "lifm_dit_s2": ("SegDiTTransformer2DModel", {
        "num_attention_heads": 6, "attention_head_dim": 64, "in_channels": 5, "out_channels": 4,
        "num_layers": 12, "sample_size": 28, "patch_size": 2, "num_embeds_ada_norm": 3,
    }),
    "lvfm_stdit_s2": ("DiffuserSTDiT", {
        "input_size": [64, 28, 28], "in_channels": 8, "out_channels": 4, "patch_size": [1, 2, 2],
        "hidden_size": 384, "depth": 12, "num_heads": 6, "caption_channels": 1, "model_max_length": 1,
    }),
    # the avae-16f8 config.json of the release (spec 1.2)
    "vae_avae_16f8": ("AutoencoderKL", {
        "block_out_channels": [128, 256, 256, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 16,
        "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 1.33, "mid_block_add_attention": True,
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
