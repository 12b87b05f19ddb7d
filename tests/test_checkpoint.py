"""load_model refuses everything it cannot load exactly, with a message that names the problem."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from echoflow_models import CheckpointError, load_model, save_model
from echoflow_models.checkpoint import load_anatomy_bank, load_tensor_asset, read_model_class


@pytest.fixture
def lifm_copy(fixtures_dir, tmp_path):
    folder = tmp_path / "lifm" / "tiny"
    shutil.copytree(fixtures_dir / "lifm" / "tiny", folder)
    return folder


def weights(folder):
    return folder / "diffusion_pytorch_model.safetensors"


def test_picks_class_from_config(fixtures_dir, reid_tiny_dir):
    assert read_model_class(fixtures_dir / "vae" / "tiny") == "AutoencoderKL"
    assert read_model_class(fixtures_dir / "lifm" / "tiny") == "SegDiTTransformer2DModel"
    assert read_model_class(fixtures_dir / "lvfm" / "tiny") == "DiffuserSTDiT"
    assert read_model_class(reid_tiny_dir) == "ReID"
    model = load_model(fixtures_dir / "lifm" / "tiny", dtype=torch.bfloat16)
    assert not model.training and next(model.parameters()).dtype == torch.bfloat16


def test_missing_and_unexpected_keys_are_counted_and_named(lifm_copy):
    state = load_file(str(weights(lifm_copy)))
    state.pop("proj_out_2.bias")
    state.pop("proj_out_2.weight")
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(weights(lifm_copy)))
    with pytest.raises(CheckpointError) as err:
        load_model(lifm_copy)
    msg = str(err.value)
    assert str(lifm_copy) in msg
    assert "2 missing keys (proj_out_2.bias, proj_out_2.weight)" in msg
    assert "1 unexpected keys (extra.weight)" in msg


def test_misshaped_tensor_is_reported_with_both_shapes(lifm_copy):
    config = json.loads((lifm_copy / "config.json").read_text())
    config["num_embeds_ada_norm"] = 5  # the checkpoint has 3 views + null
    (lifm_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mis-shaped tensors .*class_embedder.embedding_table.weight: "
                       r"checkpoint \[4, 32\] vs model \[6, 32\]"):
        load_model(lifm_copy)


@pytest.mark.parametrize("name", ["SegUnet2DModel", "UNetSTIC"])
def test_known_but_unsupported_class_is_named(lifm_copy, name):
    (lifm_copy / "config.json").write_text(json.dumps({"_class_name": name}))
    with pytest.raises(CheckpointError, match=f"`{name}` .* not supported yet"):
        load_model(lifm_copy)


def test_unknown_class_and_missing_config(lifm_copy, tmp_path):
    (lifm_copy / "config.json").write_text(json.dumps({"_class_name": "FancyNet"}))
    with pytest.raises(CheckpointError, match="unknown model class `FancyNet`"):
        load_model(lifm_copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither config.json nor config.yaml"):
        load_model(empty)
    with pytest.raises(CheckpointError, match="no such model folder"):
        load_model(tmp_path / "absent")


def test_truncated_and_corrupt_safetensors(lifm_copy):
    data = weights(lifm_copy).read_bytes()
    weights(lifm_copy).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(lifm_copy)
    weights(lifm_copy).write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(lifm_copy)


def test_pickled_weights_are_never_loaded(lifm_copy):
    weights(lifm_copy).unlink()
    torch.save({"a": torch.zeros(1)}, lifm_copy / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never loaded; convert them to safetensors"):
        load_model(lifm_copy)


class Payload:
    def __reduce__(self):
        return (print, ("this code must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt_asset_with_code_is_refused(tmp_path, capsys):
    evil = tmp_path / "scaling.pt"
    with evil.open("wb") as fh:
        pickle.dump({"mean": Payload()}, fh)
    with pytest.raises(CheckpointError, match="not plain tensors"):
        load_tensor_asset(evil)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"mean": torch.zeros(4), "std": torch.ones(4)}, tmp_path / "ok.pt")
    assert set(load_tensor_asset(tmp_path / "ok.pt")) == {"mean", "std"}


def test_anatomy_bank_shape_is_checked(fixtures_dir, tmp_path):
    bank = load_anatomy_bank(fixtures_dir / "assets" / "anatomies_tiny.pt")
    assert bank.shape == (16, 128)
    torch.save(torch.zeros(5), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"non-empty \[N, D\]"):
        load_anatomy_bank(tmp_path / "bad.pt")


def test_save_then_load_round_trips_every_class(fixtures_dir, reid_tiny_dir, tmp_path):
    for source in [fixtures_dir / k / "tiny" for k in ("vae", "lifm", "lvfm")] + [reid_tiny_dir]:
        model = load_model(source)
        out = save_model(model, tmp_path / source.parent.name / "copy")
        again = load_model(out)
        for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
