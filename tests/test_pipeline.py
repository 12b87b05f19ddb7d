"""EchoFlowPipeline on the tiny reference checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echoflow_models.pipeline import EchoFlowPipeline, PrivacyGateError, preprocess_mask


@pytest.fixture(scope="module")
def pipe(tiny_root):
    return EchoFlowPipeline.from_folder(tiny_root)


def test_sample_images_is_seeded_per_sample(pipe):
    batch = pipe.sample_images("A4C", steps=3, seed=5, batch_size=3)
    assert batch.shape == (3, 4, 28, 28) and batch.dtype == torch.float32
    single = pipe.sample_images("A4C", steps=3, seed=6, batch_size=1)
    assert torch.allclose(batch[1], single[0], atol=1e-5)
    assert torch.equal(pipe.sample_images("A4C", steps=3, seed=5, batch_size=3), batch)
    assert not torch.allclose(pipe.sample_images("PLAX", steps=3, seed=5, batch_size=1)[0], batch[0])


def test_view_and_mask_condition_the_lifm(pipe):
    mask = np.zeros((112, 112), dtype=np.float32)
    mask[30:80, 50:80] = 1.0
    a = pipe.sample_images("A4C", mask=mask, steps=2, seed=0)
    b = pipe.sample_images("A4C", steps=2, seed=0)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="unknown view 'XYZ'"):
        pipe.sample_images("XYZ", steps=1)
    with pytest.raises(ValueError, match="got 2 masks for a batch of 3"):
        pipe.sample_images("A4C", mask=np.stack([mask, mask]), steps=1, batch_size=3)


def test_mask_preprocessing_follows_the_reference():
    mask = np.zeros((200, 300), dtype=np.float32)  # any size and aspect ratio
    mask[50:150, 100:200] = 0.6  # faint strokes: autocontrast stretches them before the threshold
    out = preprocess_mask(mask, 28)
    assert out.shape == (1, 1, 28, 28) and set(out.unique().tolist()) == {0.0, 1.0}
    assert 0.1 < out.mean().item() < 0.4
    with pytest.raises(ValueError, match="empty after preparation"):  # a blank mask guides nothing: refused
        preprocess_mask(np.zeros((112, 112)), 28)
    latent = torch.zeros(1, 1, 28, 28)
    latent[..., 3:9, 3:9] = 0.7
    assert preprocess_mask(latent, 28).sum().item() == 36  # latent size: binarised only


def test_animate_decode_encode_shapes_and_guidance(pipe):
    image = pipe.sample_images("A4C", steps=2, seed=1, batch_size=2)
    video = pipe.animate(image, [30.0, 70.0], steps=2, seed=1)
    assert video.shape == (2, 4, 8, 28, 28)
    assert not torch.allclose(video[0], pipe.animate(image[:1], 70.0, steps=2, seed=1)[0])
    guided = pipe.animate(image, [30.0, 70.0], steps=2, seed=1, guidance=2.0)
    assert guided.shape == video.shape and not torch.allclose(guided, video)
    frames = pipe.decode(video, chunk_size=5)
    assert frames.shape == (2, 8, 112, 112, 3) and frames.dtype == torch.uint8
    # chunking changes only float rounding (conv batch kernels), never more than one grey level
    assert (frames.int() - pipe.decode(video, chunk_size=16).int()).abs().max() <= 1
    stills = pipe.decode(image)
    assert stills.shape == (2, 112, 112, 3)
    latents = pipe.encode(stills[..., 0])
    assert latents.shape == (2, 4, 28, 28)
    with pytest.raises(ValueError, match="EF must be a percentage"):
        pipe.animate(image, 150.0, steps=1)
    with pytest.raises(ValueError, match=r"animate expects latent images"):
        pipe.animate(video, 50.0, steps=1)


def test_privacy_check_fails_closed_without_a_gate(pipe, tiny_root):
    image = pipe.sample_images("A4C", steps=1)
    report = pipe.check_privacy(image, "A4C")
    assert len(report.items) == 1 and report.bank_size == 16
    bare = EchoFlowPipeline(pipe.vae, pipe.scaler, pipe.lifm, pipe.lvfm, gates={})
    with pytest.raises(PrivacyGateError, match="no privacy gate loaded for view A4C"):
        bare.check_privacy(image, "A4C")


def test_generate_retries_and_refuses_when_everything_is_rejected(pipe):
    result = pipe.generate("A4C", ef=50, image_steps=1, video_steps=1)
    assert result.frames.shape == (8, 112, 112, 3) and result.tries >= 1
    strict = EchoFlowPipeline(pipe.vae, pipe.scaler, pipe.lifm, pipe.lvfm, gates=dict(pipe.gates))
    gate = strict.gates["A4C"]
    from echoflow_models.reid import PrivacyGate

    strict.gates["A4C"] = PrivacyGate(gate.reid, gate.bank, tau=1e-6, latent_shape=(4, 28, 28))  # all "too similar"
    with pytest.raises(PrivacyGateError, match="rejected all 3 latent images"):
        strict.generate("A4C", ef=50, image_steps=1, video_steps=1, max_tries=3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_and_decode_stays_finite(tiny_root, dtype):
    pipe = EchoFlowPipeline.from_folder(tiny_root, dtype=dtype, views=["A4C"])
    assert pipe.vae_dtype == (torch.float32 if dtype == torch.float16 else dtype)
    image = pipe.sample_images("A4C", steps=2)
    video = pipe.animate(image, 55.0, steps=2)
    assert torch.isfinite(video).all()
    assert pipe.decode(video).shape == (1, 8, 112, 112, 3)


def test_default_guidance_is_the_lvfm_recommendation(tiny_root, tmp_path):
    """A video model's sampling.json sets the guidance used when none is given; without one it is 1 (off)."""
    import json
    import shutil

    from echoflow_models.checkpoint import CheckpointError

    root = tmp_path / "weights"
    shutil.copytree(tiny_root, root)
    plain = EchoFlowPipeline.from_folder(root)
    assert plain.default_guidance == 1.0
    (root / "lvfm" / "tiny" / "sampling.json").write_text(json.dumps({"guidance": 2.5}))
    tuned = EchoFlowPipeline.from_folder(root)
    assert tuned.default_guidance == 2.5
    image = tuned.sample_images("A4C", steps=2, seed=1)
    default = tuned.animate(image, 40.0, steps=2, seed=1)
    torch.testing.assert_close(default, tuned.animate(image, 40.0, steps=2, seed=1, guidance=2.5))
    assert not torch.allclose(default, tuned.animate(image, 40.0, steps=2, seed=1, guidance=1.0))
    result = tuned.generate("A4C", 40.0, seed=1, image_steps=2, video_steps=2)
    assert result.guidance == 2.5
    for bad in ({"guidance": -1}, {"guidance": "high"}, {"steps": 5}, [2.0]):
        (root / "lvfm" / "tiny" / "sampling.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="sampling.json.*guidance"):
            EchoFlowPipeline.from_folder(root)
