"""Slow learning as a LightningModule: the masked conditional video diffusion model (paper Sec. 3.1).

The module only connects the layers: the networks (``unet`` trains; ``autoencoder`` and ``text_encoder``
are frozen, App. C.1), the diffusion process (:class:`MaskedDiffusion`, Eq. 1-2) and the chunk sampler
(:class:`ChunkSampler`, DPM-Solver with three-way guidance). Batches follow the contract of
``slowfast_vgen.datamodules.common``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from slowfast_vgen.datamodules.common import check_episode
from slowfast_vgen.seeds import stable_seed
from slowfast_vgen.diffusion import ChunkSampler, MaskedDiffusion
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation import LongVideoGenerator
from slowfast_vgen.io import repo_path
from slowfast_vgen.models import FrameAutoencoder, TextEncoder, check_video, unet_output

FROZEN_PREFIXES = ("autoencoder.", "text_encoder.")


class SlowLearningSystem(L.LightningModule):
    """Trains the UNet of the masked conditional video diffusion model (slow learning, Phi).

    Args:
        unet: the denoiser, a ``diffusers.UNet3DConditionModel`` (built from a preset or loaded pretrained).
        autoencoder: frozen frame autoencoder (pixels <-> latents).
        text_encoder: frozen text encoder for free-text actions.
        diffusion: the training noise process and guidance dropout (default: DDPM 1000 steps).
        lr, betas, weight_decay: Adam (paper App. C.1: 5e-6, (0.9, 0.999), 0).
        gradient_checkpointing: trade compute for memory in the UNet.
        sampler, num_inference_steps, guidance_image, guidance_text: inference (DPM-Solver, 20, 2, 5).
        thresholding: clip predicted clean samples to [-1, 1] while sampling (pixel-space models).
        seed: mixed into every sample's noise seed and into the per-step dropout seed.
        temporal_dropout: if set, overrides the dropout of the UNet's temporal convolutions (diffusers
            hard-codes ModelScope's 0.1).
        chunk_frames, context_frames: f_g and f_p of long-video generation (``predict`` on episodes).
        init_weights: UNet weights (.safetensors, e.g. from ``sfvgen export``) to start from: fine-tuning, or
            the slow-fast loop starting from a slow-learned model.
    """

    def __init__(
        self,
        unet: nn.Module,
        autoencoder: FrameAutoencoder,
        text_encoder: TextEncoder,
        diffusion: MaskedDiffusion | None = None,
        lr: float = 5e-6,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        gradient_checkpointing: bool = False,
        sampler: str = "dpm-solver",
        num_inference_steps: int = 20,
        guidance_image: float = 2.0,
        guidance_text: float = 5.0,
        thresholding: bool = False,
        seed: int = 0,
        temporal_dropout: float | None = None,
        chunk_frames: int = 8,
        context_frames: int | None = None,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["unet", "autoencoder", "text_encoder", "diffusion"])
        self.unet = unet
        self.autoencoder = autoencoder.requires_grad_(False)
        self.text_encoder = text_encoder.requires_grad_(False)
        self.diffusion = diffusion or MaskedDiffusion()
        self.sampler = ChunkSampler(
            self.diffusion.scheduler_config(), sampler, num_inference_steps, guidance_image, guidance_text,
            thresholding=thresholding,
        )
        if init_weights:
            load_unet_weights(self.unet, init_weights, self.diffusion.prediction_type)
        if gradient_checkpointing:
            if not getattr(self.unet, "_supports_gradient_checkpointing", False):
                raise UserInputError(f"gradient_checkpointing: {type(self.unet).__name__} does not support it in this "
                                     "diffusers version (UNet3DConditionModel has no checkpointing in 0.42); set it false")
            self.unet.enable_gradient_checkpointing()
        if temporal_dropout is not None:
            set_temporal_dropout(self.unet, temporal_dropout)
        # Plain-PyTorch long-video generator over the same networks; the TempLoRA callback attaches Theta.
        self.generator = LongVideoGenerator(
            self.unet, self.autoencoder, self.text_encoder, self.sampler, chunk_frames, context_frames
        )

    # -- the three layers, connected ------------------------------------------------------------------
    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """eps_Phi(z_t, t, c): (B, C, F, h, w) -> (B, C, F, h, w)."""
        return unet_output(self.unet, z_t, t, text)

    @torch.no_grad()
    def encode_text(self, actions: list[str]) -> torch.Tensor:
        return self.text_encoder(list(actions)).to(self.device)  # (B, L, D)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        check_video(video)
        return self.autoencoder.encode(video)  # (B, T, C, H, W) -> (B, C, F, h, w)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents)  # (B, C, F, h, w) -> (B, T, C, H, W)

    def sample_seeds(self, batch: dict[str, Any], epoch: int) -> torch.Tensor:
        """Per-sample noise seeds from (system seed, epoch, sample seed): same on any rank or restart."""
        return torch.tensor(
            [stable_seed(self.hparams.seed, epoch, int(s)) for s in batch["seed"]], dtype=torch.long
        )

    def diffusion_loss(self, batch: dict[str, Any], epoch: int, cfg_dropout: bool) -> torch.Tensor:
        z0 = batch["latents"] if "latents" in batch else self.encode_video(batch["video"])
        text = self.encode_text(batch["action"])
        null = self.encode_text([""])
        loss, _ = self.diffusion.training_loss(
            self.denoise, z0, batch["n_context"], text, null, self.sample_seeds(batch, epoch), cfg_dropout
        )
        return loss

    # -- Lightning hooks ------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout draws from the global RNG: reseed it per step and rank so that a resumed run continues
        # exactly as the uninterrupted one would have.
        torch.manual_seed(stable_seed(self.hparams.seed, "dropout", self.global_step, self.global_rank))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if batch.get("__empty__"):  # every sample of this batch was unreadable (reported by the datamodule)
            return None
        loss = self.diffusion_loss(batch, self.current_epoch, cfg_dropout=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["action"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, epoch=0, cfg_dropout=False)  # fixed noise: comparable across epochs
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["action"]))
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, epoch=0, cfg_dropout=False)
        self.log("test/loss", loss, sync_dist=True, batch_size=len(batch["action"]))
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Episodes (``first`` frames + a list of chunk ``actions``): a long video, chunk by chunk (Alg. 1a).
        Clip batches (``video`` + ``n_context``): one chunk per sample after its context frames."""
        seed = stable_seed(self.hparams.seed, "predict", batch_idx)
        if "actions" in batch:
            if "frames" in batch:  # a whole episode (the episode contract); generation alone needs first + actions
                check_episode({**batch, "first": batch["first"][0], "frames": batch["frames"][0]},
                              self.generator.chunk_frames, where=f"episode {batch_idx}")
            chunks = list(self.generator.stream(batch["first"], batch["actions"], seed=seed))
            video = torch.cat([batch["first"], *[c.video for c in chunks]], dim=1)  # (1, T, C, H, W)
            out = {"video": video.cpu(), "updates": [c.update for c in chunks]}
            if self.generator.frame_bank is not None:  # the chunks that a frame bank showed an earlier frame
                out["recalled_chunks"] = [c.index for c in chunks if c.recalled is not None]
            return out
        video = batch["video"]
        n_ctx = int(batch["n_context"].min())
        out = self.generate_chunk(video[:, :n_ctx], batch["action"], video.shape[1] - n_ctx, seed=seed)
        return {"video": out.cpu()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Only the UNet trains (App. C.1); Adam, betas (0.9, 0.999), weight decay 0.
        return torch.optim.Adam(
            self.unet.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
        )

    def on_train_epoch_end(self) -> None:
        # the shard loader's bad samples of this epoch (named in its warning), as a number in the logger too
        bad = getattr(getattr(self.trainer, "datamodule", None), "bad_samples", None)
        if isinstance(bad, dict) and self.trainer.logger is not None:
            self.log("data/bad_samples", float(len(bad)), on_epoch=True, on_step=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Frozen networks come from their own source (preset or pretrained folder): keep checkpoints small.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]
        checkpoint["prediction_type"] = self.diffusion.prediction_type  # kept by `sfvgen export`

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        own = self.state_dict()
        checkpoint["state_dict"].update({k: v for k, v in own.items() if k.startswith(FROZEN_PREFIXES)})

    # -- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_chunk(
        self, context: torch.Tensor, actions: list[str], n_frames: int, seed: int = 0, progress: bool = False
    ) -> torch.Tensor:
        """Pixels in, pixels out: context (B, f_p, C, H, W) in [0, 1] + actions -> (B, f_p + n_frames, C, H, W)."""
        z_ctx = self.encode_video(context)  # (B, C, f_p, h, w)
        g = torch.Generator(device=self.device).manual_seed(seed)
        z = self.sampler.sample(
            self.denoise, z_ctx, n_frames, self.encode_text(actions), self.encode_text([""]), g, progress=progress
        )
        return self.decode_latents(z)


def load_unet_weights(unet: nn.Module, path: str, prediction_type: str | None = None) -> None:
    """UNet weights from a safetensors file (data only), with a clear error for a missing or mismatched file.

    ``prediction_type``: what the loading system's diffusion predicts; checked against the file's metadata
    (written by ``sfvgen export``) where it has one: epsilon weights read as v (or back) sample garbage.
    """
    from slowfast_vgen.io import read_safetensors

    path = repo_path(path)  # relative paths: from the working directory, else the repository
    state, metadata = read_safetensors(path, "UNet weights")
    check_prediction_type(metadata.get("prediction_type"), prediction_type, f"UNet weights {str(path)!r}")
    try:
        unet.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserInputError(f"UNet weights {str(path)!r} do not fit this UNet preset: {first}") from None


def check_prediction_type(trained: str | None, expected: str | None, source: str) -> None:
    """Weights trained to predict one thing (epsilon, v, z_0) sample garbage when read as another."""
    if trained and expected and trained != expected:
        raise UserInputError(f"{source} were trained with prediction_type {trained!r}, but this config's diffusion "
                             f"uses {expected!r}; set model.diffusion.prediction_type: {trained}")


def set_temporal_dropout(unet: nn.Module, p: float) -> None:
    """Set the dropout probability inside the UNet3D's temporal convolution layers."""
    from diffusers.models.resnet import TemporalConvLayer

    for module in unet.modules():
        if isinstance(module, TemporalConvLayer):
            for sub in module.modules():
                if isinstance(sub, nn.Dropout):
                    sub.p = p
