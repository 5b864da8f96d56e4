"""T2V-Turbo's few-step LCM sampler: its own timestep spacing, the consistency boundary condition, the w-embedding.

T2V-Turbo (`scheduler/t2v_turbo_scheduler.py` of Ji4chenLi/t2v-turbo) spaces the few sampling steps over the LCM
"origin" grid ``(1..lcm_origin_steps) * (T // lcm_origin_steps) - 1`` by taking every ``lcm_origin_steps // n``-th
entry from the top: 4 steps give [999, 759, 519, 279], 8 steps [999, 879, 759, 639, 519, 399, 279, 159].
diffusers' LCMScheduler picks [999, 759, 499, 259] for the same settings, so it is not used. Betas are
"scaled_linear" 0.00085 -> 0.012 over 1000 steps; the model predicts epsilon; the boundary condition is
c_skip = sd^2 / ((t / 0.1)^2 + sd^2), c_out = (t / 0.1) / sqrt((t / 0.1)^2 + sd^2), sd = 0.5 (timestep scaling 10),
evaluated at the integer timestep. Guidance enters as an embedding of w * 1000 (w = the guidance scale itself, not
w - 1), not as classifier-free guidance.

Checked against Ji4chenLi/t2v-turbo (`scheduler/t2v_turbo_scheduler.py`, `pipeline/t2v_turbo_ms_pipeline.py`):

* `set_timesteps`, the boundary scalings and the epsilon -> x0 -> ``denoised = c_out * x0 + c_skip * x_t`` step are
  the same. Their multistep `step` re-noises ``denoised`` to the next timestep,
  ``sqrt(abar_next) * denoised + sqrt(1 - abar_next) * z``; on the last step their "next" timestep is the current
  one (the sample is re-noised to t again) but the pipeline decodes ``denoised``, which is what `step` returns here
  (twice) when ``next_t`` is None. With one step there is no noise, as in theirs.
* Their noise comes from the global RNG (`torch.randn`); here the caller passes it, so that `pipeline.sample_videos`
  can draw it per sample from a seeded generator.
* Fixed: the table of cumulative alphas was computed in float64; T2V-Turbo computes betas and their cumulative product
  in float32 (relative difference up to 9e-7). It is now computed like theirs (stored as float64 holding the float32
  values, so callers that index it in float64 are unaffected).
* Fixed: the w-embedding's frequency constant is now computed in float32 like `get_w_embedding` (``log(10000)`` as
  a float32 tensor); the values were already equal in float32 at dim 256, this removes the dependence on rounding.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def t2v_turbo_timesteps(
    num_steps: int, lcm_origin_steps: int = 50, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> list[int]:
    """The sampling timesteps, highest first (T2V-Turbo's spacing)."""
    if not 1 <= num_steps <= lcm_origin_steps:
        raise ValueError(f"num_steps must be in [1, {lcm_origin_steps}] (lcm_origin_steps), got {num_steps}")
    c = num_train_timesteps // lcm_origin_steps
    origin = [i * c - 1 for i in range(1, lcm_origin_steps + 1)]
    skip = lcm_origin_steps // num_steps
    return origin[::-skip][:num_steps]


def ddim_timesteps(ddim_steps: int = 50, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The DDIM-solver grid (ascending) that VideoDPO's T2V-Turbo recipe samples DPO timesteps from."""
    c = num_train_timesteps // ddim_steps
    return [i * c - 1 for i in range(1, ddim_steps + 1)]


def w_embedding(w: torch.Tensor, dim: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of the guidance scale w (B,), scaled by 1000 (LCM's get_w_embedding)."""
    w = w.float().reshape(-1) * 1000.0
    half = dim // 2
    if half < 2:
        raise ValueError(f"w-embedding dim must be >= 4, got {dim}")
    step = torch.log(torch.tensor(10000.0, dtype=torch.float32)) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -step).to(w.device)
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)


class T2VTurboScheduler:
    """Noise schedule, `add_noise`, and the multistep consistency sampling step."""

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, lcm_origin_steps: int = 50) -> None:
        # float32 like T2V-Turbo's scheduler; kept in a float64 tensor (exact copies of the float32 values)
        betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).double()
        self.num_train_timesteps = num_train_timesteps
        self.lcm_origin_steps = lcm_origin_steps
        self.timesteps: list[int] = []

    def set_timesteps(self, num_steps: int) -> list[int]:
        self.timesteps = t2v_turbo_timesteps(num_steps, self.lcm_origin_steps, self.num_train_timesteps)
        return self.timesteps

    def _abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()].to(like.device, torch.float32)
        return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a

    @staticmethod
    def boundary(t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.as_tensor(t, dtype=torch.float32) * TIMESTEP_SCALING
        c_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
        c_out = s / torch.sqrt(s**2 + SIGMA_DATA**2)
        return c_skip, c_out

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a = self._abar(t, x0)
        return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)

    def step(
        self, eps: torch.Tensor, t: int, sample: torch.Tensor, next_t: int | None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One consistency step from t: (next sample, denoised). The last step (next_t None) returns denoised twice."""
        a = self._abar(t, sample)
        x0 = (sample.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()
        c_skip, c_out = self.boundary(t)
        denoised = c_out.to(sample.device) * x0 + c_skip.to(sample.device) * sample.float()
        if next_t is None:
            return denoised.to(sample.dtype), denoised.to(sample.dtype)
        if noise is None:
            raise ValueError("a non-final step needs noise")
        a_next = self._abar(next_t, sample)
        prev = a_next.sqrt() * denoised + (1 - a_next).sqrt() * noise.float()
        return prev.to(sample.dtype), denoised.to(sample.dtype)
