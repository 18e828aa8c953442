"""Sampling one chunk with a diffusers scheduler and three-way classifier-free guidance (App. C.1).

Generation (Sec. 3.2, "Generation"): start the f_g new frames from noise z_T; at every step concatenate
the clean context latents z_0^{i-1} in front of the current noisy latents, predict noise with the UNet,
keep only the predictions of the new frames, and step the scheduler on them. The context is re-inserted
unchanged at every step, so it comes out of sampling exactly as it went in.

Guidance (App. C.1): eps = eps_uncond + s_img (eps_img - eps_uncond) + s_txt (eps_text - eps_img), with
s_img = 2 and s_txt = 5; the three branches run as one batched UNet call. With no context (f_p = 0) the
image branch equals the unconditional one and the rule reduces to text guidance, which is exactly
``TextToVideoSDPipeline``'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from tqdm.auto import tqdm

from slowfast_vgen.diffusion.masked import Denoiser
from slowfast_vgen.errors import UserInputError

SCHEDULERS: dict[str, Callable[..., object]] = {
    # DPM-Solver++ (2nd order, multistep): the paper's 20-step inference sampler.
    "dpm-solver": lambda cfg, **kw: DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", **kw),
    "ddim": lambda cfg, **kw: DDIMScheduler.from_config(cfg, **kw),
    "ddpm": lambda cfg, **kw: DDPMScheduler.from_config(cfg, **kw),
    # Euler has no ``thresholding`` option in diffusers: ChunkSampler thresholds its clean-sample estimate itself.
    "euler": lambda cfg, **kw: EulerDiscreteScheduler.from_config(cfg),
}

DYNAMIC_THRESHOLDING_RATIO = 0.995  # diffusers' default, used by the DDPM / DDIM / DPM-Solver schedulers


def threshold_sample(sample: torch.Tensor, sample_max_value: float, ratio: float = DYNAMIC_THRESHOLDING_RATIO) -> torch.Tensor:
    """Dynamic thresholding (Imagen) of a predicted clean sample, exactly as diffusers' DDPM/DDIM/DPM-Solver do it."""
    dtype, (b, *_) = sample.dtype, sample.shape
    flat = sample.float().reshape(b, -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=sample_max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(dtype)


class ChunkSampler:
    """Generates the next ``f_g`` latent frames of a video given clean context latents and an action.

    Args:
        scheduler_config: the training noise schedule (``MaskedDiffusion.scheduler_config()``).
        scheduler: one of ``"dpm-solver"`` (paper), ``"ddim"``, ``"ddpm"``, ``"euler"``.
        num_inference_steps: sampling steps (paper: 20; Table 9 sweeps 10-100).
        guidance_image, guidance_text: three-way guidance scales (paper: 2 and 5).
        thresholding: dynamic thresholding of the predicted clean sample (Imagen) to [-max, max]: for
            pixel-space models, whose data lie in [-1, 1]; latent models (ModelScope) leave it off.
        sample_max_value: the bound used by ``thresholding``.
    """

    def __init__(
        self,
        scheduler_config: dict,
        scheduler: str = "dpm-solver",
        num_inference_steps: int = 20,
        guidance_image: float = 2.0,
        guidance_text: float = 5.0,
        thresholding: bool = False,
        sample_max_value: float = 1.0,
    ) -> None:
        if scheduler not in SCHEDULERS:
            raise UserInputError(f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}")
        if num_inference_steps < 1:
            raise UserInputError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.scheduler_name = scheduler
        self.thresholding, self.sample_max_value = thresholding, sample_max_value
        extra = dict(thresholding=True, sample_max_value=sample_max_value) if thresholding else {}
        self.scheduler = SCHEDULERS[scheduler](scheduler_config, **extra)
        self.num_inference_steps = num_inference_steps
        self.guidance_image, self.guidance_text = guidance_image, guidance_text

    def guided_noise(
        self,
        denoiser: Denoiser,
        context: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        null_text: torch.Tensor,
    ) -> torch.Tensor:
        """Three-way guided noise prediction for the new frames ``x`` (B, C, f_g, h, w).
        """
        b, f_p = x.shape[0], context.shape[2]
        use_image = f_p > 0 and self.guidance_image != 1.0
        null = null_text.expand(b, *null_text.shape[1:])
        # Branch order [uncond, (image), text] as in diffusers pipelines ([negative, positive]).
        if use_image:
            ctx = torch.cat([torch.zeros_like(context), context, context])  # (3B, C, f_p, h, w)
            txt = torch.cat([null, null, text])
        else:
            ctx = torch.cat([context, context])  # (2B, C, f_p, h, w); f_p may be 0
            txt = torch.cat([null, text])
        n = ctx.shape[0] // b
        # Only the noisy frames are scaled (Euler divides by sqrt(sigma^2 + 1)); the context stays clean, as
        # the model saw it in training and as the other schedulers (identity scaling) pass it.
        x_in = self.scheduler.scale_model_input(x, t)
        inp = torch.cat([ctx, x_in.repeat(n, 1, 1, 1, 1)], dim=2)  # (nB, C, f_p + f_g, h, w)
        eps = denoiser(inp, t.expand(inp.shape[0]), txt)[:, :, f_p:]  # (nB, C, f_g, h, w)
        if use_image:
            e_u, e_i, e_t = eps.chunk(3)
            return e_u + self.guidance_image * (e_i - e_u) + self.guidance_text * (e_t - e_i)
        e_u, e_t = eps.chunk(2)
        return e_u + self.guidance_text * (e_t - e_u)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        context: torch.Tensor,
        n_frames: int,
        text: torch.Tensor,
        null_text: torch.Tensor,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate ``n_frames`` new latent frames after ``context`` (B, C, f_p, h, w); f_p may be 0.

        Returns the whole chunk ``(B, C, f_p + n_frames, h, w)``: the context, bit-identical, then the new
        frames. ``latents`` overrides the initial noise z_T (B, C, n_frames, h, w).
        """
        if n_frames < 1:
            raise UserInputError(f"n_frames must be >= 1, got {n_frames}")
        b, c, _, h, w = context.shape
        shape = (b, c, n_frames, h, w)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=context.device, dtype=context.dtype)
        elif tuple(latents.shape) != shape:
            raise UserInputError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        self.scheduler.set_timesteps(self.num_inference_steps, device=context.device)
        x = latents * self.scheduler.init_noise_sigma  # z_T for the new frames
        for t in tqdm(self.scheduler.timesteps, desc="denoise", leave=False, disable=not progress):
            eps = self.guided_noise(denoiser, context, x, t, text, null_text)
            if self.thresholding and isinstance(self.scheduler, EulerDiscreteScheduler):
                eps = self._euler_thresholded_output(eps, x)
            x = self.scheduler.step(eps, t, x).prev_sample
        return torch.cat([context, x.to(context.dtype)], dim=2)  # the clean context, re-inserted

    def _euler_thresholded_output(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The model output that makes Euler's clean-sample estimate the dynamically thresholded one.

        diffusers' Euler scheduler has no ``thresholding``; this applies the same rule the other schedulers
        apply to their predicted z_0, by inverting Euler's (linear) map from model output to z_0.
        """
        sigma = self.scheduler.sigmas[self.scheduler.step_index].to(out.device, torch.float32)
        kind = self.scheduler.config.prediction_type
        xf, of = x.float(), out.float()
        if kind == "epsilon":  # z_0 = x - sigma eps
            x0 = xf - sigma * of
            new = (xf - threshold_sample(x0, self.sample_max_value)) / sigma
        elif kind == "v_prediction":  # z_0 = -sigma / sqrt(sigma^2 + 1) v + x / (sigma^2 + 1)
            a, c = -sigma / (sigma**2 + 1) ** 0.5, 1 / (sigma**2 + 1)
            x0 = a * of + c * xf
            new = (threshold_sample(x0, self.sample_max_value) - c * xf) / a
        else:  # "sample": the output is z_0
            new = threshold_sample(of, self.sample_max_value)
        return new.to(out.dtype)
