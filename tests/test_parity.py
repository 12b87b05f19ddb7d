"""Golden outputs of the public reference implementation, reproduced to 1e-4 from the tiny checkpoints."""

from __future__ import annotations

import torch

from echoflow_models import load_model

TOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_lifm_matches_reference(fixtures_dir, golden):
    lifm = load_model(fixtures_dir / "lifm" / "tiny")
    out = lifm(golden["lifm.x"], golden["lifm.t"], golden["lifm.class_labels"], golden["lifm.segmentation"])
    assert max_diff(out, golden["lifm.out"]) <= TOL


def test_lvfm_matches_reference_including_attention_layout(fixtures_dir, golden):
    lvfm = load_model(fixtures_dir / "lvfm" / "tiny")
    args = golden["lvfm.x"], golden["lvfm.t"]
    out = lvfm(*args, golden["lvfm.ef"], golden["lvfm.cond_image"])
    assert max_diff(out, golden["lvfm.out"]) <= TOL
    out90 = lvfm(*args, torch.full_like(golden["lvfm.ef"], 0.9), golden["lvfm.cond_image"])
    assert max_diff(out90, golden["lvfm.out_ef90"]) <= TOL


def test_lvfm_accepts_ef_as_flat_fractions_and_5d_condition(fixtures_dir, golden):
    lvfm = load_model(fixtures_dir / "lvfm" / "tiny")
    cond = golden["lvfm.cond_image"]
    ef = golden["lvfm.ef"].reshape(-1)  # [B] fractions: the public API
    out = lvfm(golden["lvfm.x"], golden["lvfm.t"], ef, cond[:, :, 0])  # 4-D image repeated over T
    assert torch.equal(cond, cond[:, :, :1].expand_as(cond)), "golden cond is a repeated image"
    assert max_diff(out, golden["lvfm.out"]) <= TOL


def test_textbook_attention_would_not_match(fixtures_dir, golden):
    """Guards the quirk: transposing heads/tokens back (the textbook layout) changes the output."""
    from echoflow_models import lvfm as lvfm_module

    lvfm = load_model(fixtures_dir / "lvfm" / "tiny")

    def textbook(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    original = lvfm_module.QuirkAttention.forward
    lvfm_module.QuirkAttention.forward = textbook
    try:
        out = lvfm(golden["lvfm.x"], golden["lvfm.t"], golden["lvfm.ef"], golden["lvfm.cond_image"])
    finally:
        lvfm_module.QuirkAttention.forward = original
    assert max_diff(out, golden["lvfm.out"]) > 1e-2


def test_vae_encode_decode_match_reference(fixtures_dir, golden):
    vae = load_model(fixtures_dir / "vae" / "tiny")
    posterior = vae.encode(golden["vae.image"])
    assert max_diff(posterior.mean, golden["vae.posterior_mean"]) <= TOL
    assert max_diff(posterior.std, golden["vae.posterior_std"]) <= TOL
    assert max_diff(vae.decode(golden["vae.latent"]), golden["vae.decoded"]) <= TOL


def test_reid_backbone_matches_reference(reid_tiny_dir, golden):
    reid = load_model(reid_tiny_dir)
    assert max_diff(reid(golden["reid.latent"]), golden["reid.embedding"]) <= TOL
    emb = reid.embed(golden["reid.latent"])
    assert max_diff(emb, torch.sigmoid(golden["reid.embedding"])) <= TOL


def test_stdit_sincos_tables_equal_the_checkpoint(fixtures_dir):
    import json

    from safetensors.torch import load_file

    from echoflow_models.checkpoint import build_model

    config = json.loads((fixtures_dir / "lvfm" / "tiny" / "config.json").read_text())
    fresh = build_model("DiffuserSTDiT", config)
    stored = load_file(str(fixtures_dir / "lvfm" / "tiny" / "diffusion_pytorch_model.safetensors"))
    assert torch.allclose(fresh.model.pos_embed, stored["model.pos_embed"], atol=1e-6)
    assert torch.allclose(fresh.model.pos_embed_temporal, stored["model.pos_embed_temporal"], atol=1e-6)


def test_caption_adaln_routes_the_ef_through_the_modulation_and_is_off_by_default(tmp_path):
    """The demo's extension: with `caption_adaln` the EF changes the output even with every cross-attention
    projection zeroed; without it (every released config) those zeroed projections silence the EF."""
    from echoflow_models import load_model, save_model
    from echoflow_models.lvfm import DiffuserSTDiT, STDiTConfig

    def tiny(adaln: bool) -> DiffuserSTDiT:
        torch.manual_seed(0)
        cfg = STDiTConfig(input_size=[4, 8, 8], in_channels=8, patch_size=[2, 4, 4], hidden_size=16, depth=1,
                          num_heads=2, caption_channels=1, model_max_length=1, caption_adaln=adaln)
        model = DiffuserSTDiT(cfg).eval()
        model.initialize_weights()
        for p in model.parameters():  # the reference init zeroes the output layers; make them live
            torch.nn.init.normal_(p, std=0.2)
        for block in model.model.blocks:
            torch.nn.init.zeros_(block.cross_attn.proj.weight)
            torch.nn.init.zeros_(block.cross_attn.proj.bias)
        return model

    x, cond, t = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([0.7])
    for adaln in (False, True):
        model = tiny(adaln)
        with torch.no_grad():
            low, high = (model(x, t, torch.tensor([ef]), cond) for ef in (0.2, 0.8))
        assert torch.equal(low, high) != adaln
    save_model(model, tmp_path / "adaln")
    again = load_model(tmp_path / "adaln")
    assert again.config.caption_adaln is True
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, torch.tensor([0.8]), cond), high)
    assert STDiTConfig().caption_adaln is False  # released configs have no such key
