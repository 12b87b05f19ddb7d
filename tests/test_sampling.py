"""Flow solvers, guidance, seeded noise and the training loss."""

from __future__ import annotations

import math

import pytest
import torch

from echoflow_models.sampling import (
    flow_matching_loss,
    guided_velocity,
    sample_flow,
    seeded_noise,
    time_grid,
)


def test_euler_on_linear_field_is_the_product_of_step_factors():
    # dz/dt = a z integrated from t=1 to 0 with Euler: each step multiplies by (1 + dt a), dt = -1/n.
    a, n = 0.7, 10
    z1 = torch.ones(2, 3)
    out = sample_flow(lambda z, t: a * z, z1, steps=n, solver="euler")
    assert torch.allclose(out, z1 * (1 - a / n) ** n, atol=1e-6)


@pytest.mark.parametrize("solver,order", [("heun", 2), ("midpoint", 2), ("euler", 1)])
def test_solvers_converge_to_the_exact_flow_at_their_order(solver, order):
    a = 0.9
    exact = math.exp(-a)  # z(0) = z(1) exp(-a)
    errs = [abs(sample_flow(lambda z, t: a * z, torch.ones(1), steps=n, solver=solver).item() - exact)
            for n in (8, 16)]
    assert errs[0] / errs[1] == pytest.approx(2**order, rel=0.15)


def test_straight_flow_is_exact_for_any_solver():
    # velocity of a straight path x1 -> x0 is constant (x1 - x0): every solver lands on x0.
    x0 = torch.tensor([[0.3, -1.2]])
    x1 = torch.tensor([[1.0, 2.0]])
    for solver in ("euler", "heun", "midpoint"):
        assert torch.allclose(sample_flow(lambda z, t: x1 - x0, x1, steps=3, solver=solver), x0, atol=1e-6)


def test_time_grid_and_timesteps_passed_to_the_model():
    seen = []
    sample_flow(lambda z, t: (seen.append(t.clone()), z * 0)[1], torch.zeros(2, 1), steps=4)
    assert torch.allclose(torch.stack(seen)[:, 0], torch.tensor([1.0, 0.75, 0.5, 0.25]))
    assert seen[0].shape == (2,)
    assert torch.equal(time_grid(2), torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        time_grid(0)
    with pytest.raises(ValueError, match="unknown solver"):
        sample_flow(lambda z, t: z, torch.zeros(1), solver="rk4")


def test_callback_sees_every_step_and_can_abort():
    calls = []
    sample_flow(lambda z, t: z, torch.ones(1), steps=5, callback=lambda k, n, z: calls.append((k, n)))
    assert calls == [(k, 5) for k in range(1, 6)]

    def interrupt(k, n, z):
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_flow(lambda z, t: z, torch.ones(1), steps=5, callback=interrupt)


def test_seeded_noise_is_per_sample_and_batch_independent():
    batch = seeded_noise((4, 3), [10, 11, 12])
    assert torch.equal(batch[1], seeded_noise((4, 3), [11])[0])
    assert torch.equal(seeded_noise((4, 3), [10, 11, 12]), batch)
    assert not torch.equal(batch[0], batch[1])


def test_guidance_batches_both_branches_in_one_forward():
    calls = []

    def model(z, t, ef, drop):
        calls.append(z.shape[0])
        return torch.where(drop[:, None], torch.zeros_like(z), ef[:, None] * torch.ones_like(z))

    ef = torch.tensor([1.0, 2.0])
    keep = torch.zeros(2, dtype=torch.bool)
    v = guided_velocity(model, {"ef": ef, "drop": keep}, {"ef": ef, "drop": ~keep}, 3.0)
    out = v(torch.zeros(2, 4), torch.zeros(2))
    assert calls == [4]  # one forward of 2 x batch
    assert torch.allclose(out, 3.0 * ef[:, None].expand(2, 4))
    calls.clear()
    v1 = guided_velocity(model, {"ef": ef, "drop": keep}, {"ef": ef, "drop": ~keep}, 1.0)
    v1(torch.zeros(2, 4), torch.zeros(2))
    assert calls == [2]  # scale 1: conditional branch only


def test_flow_matching_loss_is_zero_for_the_true_velocity():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, generator=g)
    noise = torch.randn(3, 2, 4, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    sigma = 1e-5
    perfect = lambda z, tt: (1 - sigma) * noise - x0  # noqa: E731
    assert flow_matching_loss(perfect, x0, noise, t, sigma).item() < 1e-12
    assert flow_matching_loss(lambda z, tt: torch.zeros_like(z), x0, noise, t).item() > 0.5
