"""Flow-matching sampling and training objective.

Convention (the reference's): t = 1 is noise, t = 0 is data, the network predicts the velocity
dz/dt and is fed the raw t in [0, 1]. Sampling integrates from t = 1 to t = 0 on the fixed grid
`linspace(1, 0, steps + 1)`; Euler reproduces the reference's `odeint(method="euler")` step for step.

Precision: the time grid and the ODE state are float32 whatever the model runs in. A bf16 grid cannot
even represent 500 distinct steps near t = 1 (bf16 has 8 significant bits), so some steps would have size
zero and others twice the size; the model sees the state cast to its own dtype on every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

SOLVERS = ("euler", "heun", "midpoint")
STATE_DTYPE = torch.float32  # the integrator's state and time grid, whatever the model's dtype
MAX_STEPS = 10_000
# torch generators take seeds in [0, 2**64 - 1]; sample i of a batch uses seed + i.
MAX_SEED = 2**64 - 1

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z [B, ...], t [B]) -> v
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step, total, z)


def seeded_noise(
    shape: Sequence[int],
    seeds: Sequence[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[len(seeds), *shape] standard normal noise; sample i from a CPU generator seeded with seeds[i].

    Drawing on the CPU makes a seed give the same sample on every device and in every batch size.
    """
    seeds = [check_seed(s) for s in seeds]
    samples = [torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    return torch.stack(samples).to(device=device, dtype=dtype)


def check_seed(seed: object, span: int = 1, what: str = "seed") -> int:
    """`seed` as an int such that seed .. seed + span - 1 are all valid generator seeds; ValueError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int | float):
        raise ValueError(f"{what} must be a whole number, got {seed!r}")
    if isinstance(seed, float) and (not math.isfinite(seed) or not seed.is_integer()):
        raise ValueError(f"{what} must be a whole number, got {seed!r}")
    seed = int(seed)
    if seed < 0 or seed + max(1, span) - 1 > MAX_SEED:
        raise ValueError(f"{what} must be in [0, {MAX_SEED - max(1, span) + 1}] (seeds of this run go up to "
                         f"seed + {max(1, span) - 1}), got {seed}")
    return seed


def check_steps(steps: object, what: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"{what} must be a whole number in [1, {MAX_STEPS}], got {steps!r}")
    return steps


def check_solver(solver: object) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return str(solver)


def time_grid(steps: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """float32 [steps + 1] from 1 (noise) to 0 (data); never in the model's dtype (see the module doc)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=STATE_DTYPE)


def _state_velocity(velocity: VelocityFn, model_dtype: torch.dtype) -> VelocityFn:
    """velocity on float32 state: the model sees z in its dtype; its output is copied into a fresh float32
    tensor, so a later call cannot overwrite it (CUDA-graph and `reduce-overhead` outputs are reused buffers)."""

    def evaluate(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return velocity(z.to(model_dtype), t).to(STATE_DTYPE, copy=True)

    return evaluate


def sample_flow(
    velocity: VelocityFn,
    noise: torch.Tensor,
    steps: int = 50,
    solver: str = "euler",
    callback: StepCallback | None = None,
    model_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Integrate dz/dt = velocity(z, t) from t = 1 (noise) to t = 0 on a fixed grid; returns float32.

    euler: z += dt * v(z, t_k)  (1 evaluation per step, the reference's sampler)
    heun: trapezoidal predictor-corrector (2 evaluations, second order)
    midpoint: explicit midpoint (2 evaluations, second order)
    The state and the grid are float32; `velocity` receives z in `model_dtype` (default: the noise's dtype)
    and t in float32. The grid lives on the noise's device and is never read back to the host in the loop.
    """
    check_solver(solver)
    check_steps(steps)
    velocity = _state_velocity(velocity, model_dtype or noise.dtype)
    grid = time_grid(steps, noise.device)
    batch = noise.shape[0]
    z = noise.to(STATE_DTYPE)
    for k in range(steps):
        t0, t1 = grid[k], grid[k + 1]
        dt = t1 - t0
        v0 = velocity(z, t0.expand(batch))
        if solver == "euler":
            z = z + dt * v0
        elif solver == "heun":
            z_pred = z + dt * v0
            z = z + dt * 0.5 * (v0 + velocity(z_pred, t1.expand(batch)))
        else:
            z_mid = z + 0.5 * dt * v0
            z = z + dt * velocity(z_mid, (t0 + 0.5 * dt).expand(batch))
        if callback is not None:
            callback(k + 1, steps, z)
    return z


def guided_velocity(
    model_fn: Callable[..., torch.Tensor],
    cond_kwargs: dict,
    uncond_kwargs: dict,
    scale: float,
) -> VelocityFn:
    """Classifier-free guidance v = v_u + s (v_c - v_u), both branches in one batched forward.

    `cond_kwargs`/`uncond_kwargs` hold per-sample tensors ([B, ...]) for each keyword of `model_fn`;
    they are concatenated once here, not on every step. With s == 1 only the conditional branch runs.
    """
    if scale == 1.0:
        return lambda z, t: model_fn(z, t, **cond_kwargs)
    both = {k: torch.cat([cond_kwargs[k], uncond_kwargs[k]]) for k in cond_kwargs}

    def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c, v_u = model_fn(torch.cat([z, z]), torch.cat([t, t]), **both).chunk(2)
        return v_u + scale * (v_c - v_u)

    return velocity


def flow_matching_pair(
    data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, sigma_min: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec 5.2's training pair: z_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) x1 and the velocity
    target u = (1 - sigma_min) x1 - x0, for data x0 [B, ...], noise x1 like it and times t [B]."""
    tb = t.view(data.shape[0], *([1] * (data.ndim - 1)))
    z_t = (1 - tb) * data + (sigma_min + (1 - sigma_min) * tb) * noise
    return z_t, (1 - sigma_min) * noise - data


def flow_matching_loss(
    velocity: VelocityFn,
    data: torch.Tensor,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    sigma_min: float = 1e-5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Conditional flow matching (spec 5.2): z_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) x1,
    target u = (1 - sigma_min) x1 - x0, loss = mean squared error of velocity(z_t, t) against u."""
    b = data.shape[0]
    gen_device = generator.device if generator is not None else data.device
    if noise is None:
        noise = torch.randn(data.shape, generator=generator, device=gen_device).to(data)
    if t is None:
        t = torch.rand(b, generator=generator, device=gen_device).to(data)
    z_t, target = flow_matching_pair(data, noise, t, sigma_min)
    return torch.mean((velocity(z_t, t) - target).float() ** 2)


def sample_flow_cuda_graph(
    velocity: VelocityFn,
    noise: torch.Tensor,
    steps: int = 50,
    callback: StepCallback | None = None,
    warmup: int = 2,
    model_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Euler sampling with one step (velocity + update) captured as a CUDA graph and replayed per step.

    The same fixed grid and update as `sample_flow(..., solver="euler")`, minus the per-step launch
    overhead: the step reads the time and step size from device buffers that are refreshed
    (device-to-device copies, no host sync) before each replay. `velocity` must be capturable: fixed
    shapes, no host synchronisation, no CPU tensors created inside. The callback receives the graph's
    state buffer, which the next step overwrites: copy it to keep it. As in `sample_flow`, the state, the
    grid and the step sizes are float32 and the model sees z in `model_dtype` (default: the noise's dtype).
    Only Euler is offered: one capture holds one evaluation, so no output is read after the next replay.
    """
    if noise.device.type != "cuda":
        raise ValueError("sample_flow_cuda_graph needs CUDA tensors; use sample_flow on other devices")
    check_steps(steps)
    velocity = _state_velocity(velocity, model_dtype or noise.dtype)
    grid = time_grid(steps, noise.device)
    step_sizes = grid[1:] - grid[:-1]  # [steps], negative, float32
    batch = noise.shape[0]
    z = noise.to(STATE_DTYPE, copy=True)
    t = grid[:1].expand(batch).clone()
    dt = step_sizes[:1].clone()

    side = torch.cuda.Stream(device=noise.device)
    side.wait_stream(torch.cuda.current_stream(noise.device))
    with torch.cuda.stream(side):  # warm-up (lazy caches, kernel selection) outside the capture
        for _ in range(max(1, warmup)):
            velocity(z, t)
    torch.cuda.current_stream(noise.device).wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z.add_(dt * velocity(z, t))
    for k in range(steps):
        t.copy_(grid[k : k + 1].expand(batch))
        dt.copy_(step_sizes[k : k + 1])
        graph.replay()
        if callback is not None:
            callback(k + 1, steps, z)
    return z.clone()
