"""Masked conditional video diffusion for slow learning (paper Sec. 3.1.1, Eq. 1-2; App. C.1).

The noise process is DDPM with 1000 steps (diffusers' ``DDPMScheduler`` supplies the schedule and
``add_noise``). The first ``f_p`` latent frames of each sample stay clean (Eq. 1), the last ``f_g`` are
noised at one timestep per sample, and the loss is taken on the ``f_g`` frames only (Eq. 2). The paper
(ModelScope) predicts the noise epsilon; ``prediction_type="v_prediction"`` (v = sqrt(abar) eps -
sqrt(1 - abar) z_0) is the option for small pixel-space models: under epsilon prediction the loss barely
weighs the clean frames' error at high noise, where such a model then learns to ignore the context.
For three-way classifier-free guidance the image condition (the clean past frames, replaced by zeros) and
the text condition (replaced by the empty prompt) are dropped independently.

The network is handed in (``denoiser``), not owned: this module knows nothing of Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from slowfast_vgen.errors import UserInputError

# denoiser(z_t (B, C, F, h, w), t (B,), text (B, L, D)) -> prediction (B, C, F, h, w): the noise, or v
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def context_mask(n_context: torch.Tensor, n_frames: int) -> torch.Tensor:
    """``(B,)`` counts of clean past frames -> boolean mask ``(B, F)``, True on the f_p context frames."""
    return torch.arange(n_frames, device=n_context.device)[None, :] < n_context[:, None]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, n_context: torch.Tensor) -> torch.Tensor:
    """Eq. 2: squared error on the generated frames only, averaged per sample, then over the batch.

    Per-sample averaging keeps the loss of a global batch equal to the mean of per-process losses under
    data parallelism, whatever each sample's f_p.
    """
    gen = (~context_mask(n_context, pred.shape[2]))[:, None, :, None, None].to(pred.dtype)  # (B, 1, F, 1, 1)
    sq = (pred.float() - target.float()) ** 2 * gen  # (B, C, F, h, w)
    per_elem = pred[0].numel() // pred.shape[2]  # C*h*w elements per frame
    count = gen.flatten(1).sum(1) * per_elem  # (B,)
    if bool((count == 0).any()):
        raise UserInputError("masked_mse: a sample has no generated frames (f_p == F); expected f_g >= 1")
    return (sq.flatten(1).sum(1) / count).mean()


@dataclass
class DiffusionInputs:
    """What one training step feeds the denoiser, kept for tests and logging."""

    noisy: torch.Tensor  # (B, C, F, h, w): clean context frames + noised target frames
    timesteps: torch.Tensor  # (B,)
    noise: torch.Tensor  # (B, C, F, h, w)
    text: torch.Tensor  # (B, L, D)
    drop_image: torch.Tensor  # (B,) bool
    drop_text: torch.Tensor  # (B,) bool
    n_context: torch.Tensor  # (B,) the clean frames each sample kept


class MaskedDiffusion:
    """Training side of the masked conditional video diffusion model (Eq. 1-2).

    Args:
        num_train_timesteps: DDPM steps (paper: 1000).
        beta_schedule, beta_start, beta_end: the noise schedule (ModelScope: scaled_linear, 0.00085, 0.012).
        p_drop_image: probability of dropping the past-frames condition (paper: 0.05-0.1).
        p_drop_text: probability of dropping the text condition (paper: 0.1-0.15).
        prediction_type: what the network predicts: ``"epsilon"`` (paper, ModelScope), ``"v_prediction"``
            or ``"sample"`` (z_0). Samplers built from :meth:`scheduler_config` follow it.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        p_drop_image: float = 0.1,
        p_drop_text: float = 0.15,
        prediction_type: str = "epsilon",
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise UserInputError(f"MaskedDiffusion: prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        for name, p in (("p_drop_image", p_drop_image), ("p_drop_text", p_drop_text)):
            if not 0.0 <= p <= 1.0:
                raise UserInputError(f"MaskedDiffusion: {name} must be in [0, 1], got {p}")
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
        )
        self.num_train_timesteps = num_train_timesteps
        self.p_drop_image, self.p_drop_text = p_drop_image, p_drop_text

    def scheduler_config(self) -> dict:
        """The schedule, for building an inference scheduler with identical betas."""
        return dict(self.scheduler.config)

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Eq. 8: z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, one t per sample."""
        return self.scheduler.add_noise(z0, noise, t)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to predict at (z_0, eps, t): eps, v = sqrt(abar) eps - sqrt(1 - abar) z_0, or z_0."""
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(z0, noise, t) if self.prediction_type == "v_prediction" else z0

    def prepare(
        self,
        z0: torch.Tensor,
        n_context: torch.Tensor,
        text: torch.Tensor,
        null_text: torch.Tensor,
        seeds: torch.Tensor,
        cfg_dropout: bool = True,
    ) -> DiffusionInputs:
        """Draw t, eps and the guidance drops per sample from ``seeds`` (B,) and build Eq. 1's input.

        Randomness comes from one generator per sample, seeded by that sample's seed, so a sample gets the
        same noise whichever process or batch position it lands in (exact DDP equivalence and resume).
        """
        b, _, f = z0.shape[:3]
        if n_context.shape != (b,) or bool((n_context < 0).any()) or bool((n_context >= f).any()):
            raise UserInputError(f"n_context: expected {b} values in [0, {f - 1}], got {n_context.tolist()}")
        t, noise, u = [], [], []
        for seed in seeds.tolist():
            g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
            t.append(torch.randint(0, self.num_train_timesteps, (1,), generator=g))
            u.append(torch.rand(2, generator=g))
            noise.append(torch.randn(z0.shape[1:], generator=g))
        t = torch.cat(t).to(z0.device)  # (B,)
        noise = torch.stack(noise).to(z0.device, z0.dtype)  # (B, C, F, h, w)
        u = torch.stack(u).to(z0.device)  # (B, 2)
        drop_image = (u[:, 0] < self.p_drop_image) if cfg_dropout else torch.zeros(b, dtype=torch.bool)
        drop_text = (u[:, 1] < self.p_drop_text) if cfg_dropout else torch.zeros(b, dtype=torch.bool)
        ctx = context_mask(n_context, f)[:, None, :, None, None]  # (B, 1, F, 1, 1)
        # Eq. 1: z_t = z_{0,:f_p} (+) [sqrt(abar) z_{0,f_p:} + sqrt(1 - abar) eps]
        clean = torch.where(drop_image[:, None, None, None, None].to(z0.device), torch.zeros_like(z0), z0)
        noisy = torch.where(ctx, clean, self.add_noise(z0, noise, t))
        text = torch.where(drop_text[:, None, None].to(text.device), null_text.expand_as(text), text)
        return DiffusionInputs(noisy, t, noise, text, drop_image, drop_text, n_context)

    def training_loss(
        self,
        denoiser: Denoiser,
        z0: torch.Tensor,
        n_context: torch.Tensor,
        text: torch.Tensor,
        null_text: torch.Tensor,
        seeds: torch.Tensor,
        cfg_dropout: bool = True,
    ) -> tuple[torch.Tensor, DiffusionInputs]:
        """Eq. 2: || eps - eps_Phi(z_t, t, c) ||^2 on the f_g generated frames (or v / z_0, ``prediction_type``)."""
        inputs = self.prepare(z0, n_context, text, null_text, seeds, cfg_dropout)
        pred = denoiser(inputs.noisy, inputs.timesteps, inputs.text)
        return masked_mse(pred, self.target(z0, inputs.noise, inputs.timesteps), inputs.n_context), inputs
