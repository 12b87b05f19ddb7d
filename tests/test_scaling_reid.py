"""Latent scaling and the privacy gate."""

from __future__ import annotations

import pytest
import torch

from echoflow_models import load_model
from echoflow_models.checkpoint import load_anatomy_bank
from echoflow_models.reid import PrivacyGate, ReIDConfig, select_tau, similarity_matrix
from echoflow_models.scaling import LatentScaler


def test_scaling_round_trips_4d_and_5d(fixtures_dir):
    scaler = LatentScaler.load(fixtures_dir / "assets" / "scaling.pt")
    assert scaler.channels == 4
    for shape in [(2, 4, 28, 28), (1, 4, 3, 28, 28)]:
        z = torch.randn(shape)
        assert torch.allclose(scaler.unscale(scaler.scale(z)), z, atol=1e-5)
    z = torch.randn(2, 4, 5, 5)
    # unscale is the reference's z * std + mean per channel
    assert torch.allclose(scaler.unscale(z)[:, 2], z[:, 2] * scaler.std[2] + scaler.mean[2])
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        scaler.scale(torch.zeros(1, 3, 4, 4))


def test_scaler_fit_normalises_channels():
    z = torch.randn(50, 4, 6, 6) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 5
    scaled = LatentScaler.fit(z).scale(z)
    assert torch.allclose(scaled.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(scaled.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)


def test_pearson_is_centred_cosine():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[10.0, 20.0, 30.0], [3.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    pearson = similarity_matrix(a, b, "pearson")
    assert torch.allclose(pearson[0, :2], torch.tensor([1.0, -1.0]), atol=1e-6)
    assert torch.allclose(pearson[0, 2], torch.corrcoef(torch.stack([a[0], b[2]]))[0, 1], atol=1e-6)
    cosine = similarity_matrix(a, b, "cosine")
    assert cosine[0, 1] > 0  # all-positive vectors are never anti-aligned in cosine


@pytest.fixture(scope="module")
def gate(reid_tiny_dir, fixtures_dir):
    from echoflow_models.privacy import GateSpec, load_gate

    spec = GateSpec(reid_tiny_dir.parent, "A4C", reid_tiny_dir, [fixtures_dir / "assets" / "anatomies_tiny.pt"],
                    latent_shape=(4, 28, 28))
    return load_gate(spec, 0.9997)


class ProjectionReID(torch.nn.Module):
    """A ReID stand-in with a controllable embedding: a fixed random projection of the latent."""

    def __init__(self, in_channels: int = 4, dim: int = 128):
        super().__init__()
        self.config = ReIDConfig(in_channels=in_channels, out_channels=dim)
        self.proj = torch.nn.Linear(in_channels * 28 * 28, dim)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def embed(self, z):
        return torch.sigmoid(self.proj(z.flatten(1)) / 30)


def test_gate_rejects_bank_members_and_passes_others():
    reid = ProjectionReID()
    latents = torch.randn(3, 4, 28, 28, generator=torch.Generator().manual_seed(1))
    others = torch.randn(10, 4, 28, 28, generator=torch.Generator().manual_seed(2))
    bank = torch.cat([reid.embed(others), reid.embed(latents[:2])])  # latents 0 and 1 are "training patients"
    report = PrivacyGate(reid, bank, tau=0.9997, latent_shape=(4, 28, 28)).check(latents)
    assert [item.passed for item in report.items] == [False, False, True]
    assert [item.nearest_index for item in report.items[:2]] == [10, 11]
    assert report.items[0].max_similarity == pytest.approx(1.0, abs=1e-5)
    assert report.items[2].max_similarity < 0.9997
    assert report.passed_indices == [2]
    text = report.summary()
    assert "1/3 passed" in text and "REJECT" in text and "tau=0.9997" in text
    assert report.to_dict()["total"] == 3


def test_released_style_gate_passes_unrelated_latents(gate, golden):
    report = gate.check(golden["reid.latent"])
    assert all(item.passed for item in report.items) and report.bank_size == 16


def test_gate_fails_closed(gate):
    with pytest.raises(ValueError, match=r"judges latent images \[B, 4, 28, 28\].*got \[1, 16, 14, 14\]"):
        gate.check(torch.zeros(1, 16, 14, 14))
    # a constant embedding has no defined correlation: it must be rejected, never passed
    report = PrivacyGate(gate.reid, gate.bank, tau=0.9997, latent_shape=(4, 28, 28)).check(
        torch.full((1, 4, 28, 28), float("nan")))
    assert not report.items[0].passed
    with pytest.raises(ValueError, match="bank has 5-d rows"):
        PrivacyGate(gate.reid, torch.rand(3, 5), latent_shape=(4, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        PrivacyGate(gate.reid, torch.full((3, 128), float("nan")), latent_shape=(4, 28, 28))
    with pytest.raises(ValueError, match="tau must be a number in"):
        PrivacyGate(gate.reid, gate.bank, tau=1.5, latent_shape=(4, 28, 28))


def test_gate_is_one_matmul_against_the_bank(gate, golden):
    best, index = gate.similarities(golden["reid.latent"])
    sims = similarity_matrix(gate.reid.embed(golden["reid.latent"]), gate.bank)
    assert torch.allclose(best, sims.max(1).values) and torch.equal(index, sims.argmax(1))


def test_select_tau_percentile_rule():
    train = torch.rand(40, 8, generator=torch.Generator().manual_seed(0))
    held = torch.rand(30, 8, generator=torch.Generator().manual_seed(1))
    tau = select_tau(train, held, 95.0)
    maxima = similarity_matrix(train, held).max(1).values
    assert (maxima <= tau).float().mean().item() == pytest.approx(0.95, abs=0.03)


def test_reid_minmax_input_norm(reid_tiny_dir, fixtures_dir):
    reid = load_model(reid_tiny_dir)
    reid.config.input_norm = "minmax"
    z = torch.randn(2, 4, 28, 28) * 7 + 3
    normed = reid.normalize_input(z)
    assert normed.amin().item() == pytest.approx(-1.0) and normed.amax().item() == pytest.approx(1.0)
    assert load_anatomy_bank(fixtures_dir / "assets" / "anatomies_tiny.pt").shape[1] == 128
