"""Config values the networks do not implement are refused at load, naming the field, the value and what is
supported; values the reference ignores as well are accepted (and said so); the size presets live beside
the networks and describe the reference fixtures' sizes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from echoflow_models import CheckpointError, load_model
from echoflow_models import lifm as lifm_module
from echoflow_models import lvfm as lvfm_module
from echoflow_models import vae as vae_module
from echoflow_models.checkpoint import build_model

BUNDLED = Path(__file__).resolve().parents[1] / "echoflow_models" / "weights" / "phantom"


def fixture_config(fixtures_dir, kind: str) -> dict:
    return json.loads((fixtures_dir / kind / "tiny" / "config.json").read_text())


def build(fixtures_dir, kind: str, **changes):
    config = {**fixture_config(fixtures_dir, kind), **changes}
    return build_model(config.pop("_class_name"), config, f"{kind}/tiny/config.json")


# ----------------------------------------------------------------------------------------------------
# Refused: values whose meaning the code does not implement
# ----------------------------------------------------------------------------------------------------

REFUSED = [
    ("lifm", "norm_type", "ada_norm_single", "'ada_norm_zero'"),
    ("lifm", "norm_type", "layer_norm", "'ada_norm_zero'"),
    ("lifm", "activation_fn", "geglu", "'gelu-approximate'"),
    ("lifm", "activation_fn", "gelu", "'gelu-approximate'"),
    ("lifm", "norm_elementwise_affine", True, "False"),
    ("lvfm", "drop_path", 0.1, "0.0"),
    ("vae", "act_fn", "relu", "'silu'"),
]


@pytest.mark.parametrize(("kind", "field", "value", "supported"), REFUSED)
def test_unimplemented_values_are_refused_naming_field_value_and_support(fixtures_dir, kind, field, value, supported):
    with pytest.raises(CheckpointError) as info:
        build(fixtures_dir, kind, **{field: value})
    message = str(info.value)
    assert f"{kind}/tiny/config.json" in message  # where
    assert f"{field}={value!r}" in message  # what
    assert "not supported" in message and f"only {supported}" in message  # what would load


@pytest.mark.parametrize(
    ("field", "bad"), [("down_block_types", "DownBlock2D"), ("up_block_types", "AttnUpDecoderBlock2D")]
)
def test_vae_block_types_are_refused_with_the_supported_ones(fixtures_dir, field, bad):
    config = fixture_config(fixtures_dir, "vae")
    blocks = list(config[field])
    blocks[1] = bad
    with pytest.raises(CheckpointError) as info:
        build(fixtures_dir, "vae", **{field: blocks})
    message = str(info.value)
    assert bad in message and "not supported" in message
    assert "['DownEncoderBlock2D']" in message and "['UpDecoderBlock2D']" in message


def test_a_refused_folder_fails_at_load_model(fixtures_dir, tmp_path):
    folder = tmp_path / "lifm" / "tiny"
    shutil.copytree(fixtures_dir / "lifm" / "tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    config["norm_elementwise_affine"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: SegDiT config: norm_elementwise_affine=True"):
        load_model(folder)


# ----------------------------------------------------------------------------------------------------
# Accepted: what the reference ignores too, or what has no meaning at inference
# ----------------------------------------------------------------------------------------------------


def _same_output(model_a, model_b, *inputs) -> None:
    model_b.load_state_dict(model_a.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model_a.eval()(*inputs), model_b.eval()(*inputs), rtol=0, atol=0)


def test_no_temporal_pos_emb_is_ignored_as_the_reference_does_and_said_so(fixtures_dir, caplog):
    plain = build(fixtures_dir, "lvfm")
    with caplog.at_level(logging.WARNING, logger="echoflow_models.lvfm"):
        flagged = build(fixtures_dir, "lvfm", no_temporal_pos_emb=True)
    assert "no_temporal_pos_emb=True is ignored" in caplog.text
    assert "always added" in caplog.text
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 28, 28, generator=gen)
    cond = torch.randn(1, 4, 28, 28, generator=gen)
    _same_output(plain, flagged, x, torch.tensor([0.3]), torch.tensor([0.55]), cond)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="echoflow_models.lvfm"):
        build(fixtures_dir, "lvfm", no_temporal_pos_emb=False)
    assert "no_temporal_pos_emb" not in caplog.text


@pytest.mark.parametrize("changes", [{"upcast_attention": True}, {"dropout": 0.1}, {"norm_num_groups": 8}])
def test_lifm_fields_without_meaning_here_are_accepted_and_change_nothing(fixtures_dir, changes):
    plain = build(fixtures_dir, "lifm")
    changed = build(fixtures_dir, "lifm", **changes)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 28, 28, generator=gen)
    _same_output(plain, changed, x, torch.tensor([0.2, 0.7]), torch.tensor([0, 2]))


def test_lvfm_training_only_fields_are_accepted(fixtures_dir):
    plain = build(fixtures_dir, "lvfm")
    changed = build(fixtures_dir, "lvfm", class_dropout_prob=0.5, enable_flashattn=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 28, 28, generator=gen)
    _same_output(plain, changed, x, torch.tensor([0.5]), torch.tensor([0.4]), torch.randn(1, 4, 28, 28, generator=gen))


def test_vae_pipeline_metadata_is_accepted(fixtures_dir):
    changes = {"scaling_factor": 1.33, "shift_factor": 0.1, "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4,
               "sample_size": 512}
    plain, changed = build(fixtures_dir, "vae"), build(fixtures_dir, "vae", **changes)
    z = torch.randn(1, 4, 7, 7, generator=torch.Generator().manual_seed(3))
    plain.load_state_dict(changed.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval().decode(z), changed.eval().decode(z), rtol=0, atol=0)


def test_reference_fixtures_and_bundled_weights_load(fixtures_dir, caplog):
    with caplog.at_level(logging.WARNING):
        for kind in ("lifm", "lvfm", "vae"):
            build(fixtures_dir, kind)
        for kind, name in (("lifm", "phantom-dit"), ("lvfm", "phantom-stdit"), ("vae", "phantom-4f4")):
            load_model(BUNDLED / kind / name)
    assert "not supported" not in caplog.text and "is ignored" not in caplog.text


# ----------------------------------------------------------------------------------------------------
# Size presets beside the networks
# ----------------------------------------------------------------------------------------------------


def test_tiny_presets_are_the_reference_fixture_sizes(fixtures_dir):
    for kind, module, name in (("lifm", lifm_module, "DiT-tiny"), ("lvfm", lvfm_module, "STDiT-tiny"),
                               ("vae", vae_module, "avae-tiny")):
        config = fixture_config(fixtures_dir, kind)
        preset = module.SIZE_PRESETS[name]
        assert {k: config[k] for k in preset} == preset, name
    for kind, module in (("lifm", lifm_module), ("lvfm", lvfm_module)):
        config = fixture_config(fixtures_dir, kind)
        layout = {k: v for k, v in module.RELEASE_LAYOUT.items() if k != "input_size"}  # fixtures: 8 frames
        assert {k: config[k] for k in layout} == layout, kind


def test_presets_have_the_published_widths():
    # DiT paper table 1 (S: width 384, B: 768, both 12 layers) and the codebase's STDiT S/B configs
    for name, width in (("DiT-S/2", 384), ("DiT-B/2", 768)):
        p = lifm_module.SIZE_PRESETS[name]
        assert p["num_attention_heads"] * p["attention_head_dim"] == width and p["num_layers"] == 12
    for name, width in (("STDiT-S/2", 384), ("STDiT-B/2", 768)):
        p = lvfm_module.SIZE_PRESETS[name]
        assert p["hidden_size"] == width and p["depth"] == 12 and width % p["num_heads"] == 0


def test_bench_takes_its_sizes_from_beside_the_networks():
    from bench import suite

    assert suite.LIFM_MODELS is lifm_module.SIZE_PRESETS and suite.LIFM_COMMON is lifm_module.RELEASE_LAYOUT
    assert suite.LVFM_MODELS is lvfm_module.SIZE_PRESETS and suite.LVFM_COMMON is lvfm_module.RELEASE_LAYOUT
    assert suite.VAE_MODELS is vae_module.SIZE_PRESETS
    model = suite.build_lifm("DiT-tiny")
    assert model.config.num_layers == lifm_module.SIZE_PRESETS["DiT-tiny"]["num_layers"]
