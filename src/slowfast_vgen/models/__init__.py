"""Networks: the UNet3D denoiser, frozen frame autoencoders and frozen text encoders."""

from slowfast_vgen.models.autoencoder import (
    DiffusersVAE,
    FrameAutoencoder,
    PixelShuffleAutoencoder,
    check_video,
    load_vae,
)
from slowfast_vgen.models.text import CLIPTextEncoder, HashTextEncoder, OpenCLIPTextEncoder, TextEncoder
from slowfast_vgen.models.unet import UNET_PRESETS, build_unet3d, load_unet3d, unet_output

__all__ = [
    "CLIPTextEncoder",
    "DiffusersVAE",
    "FrameAutoencoder",
    "HashTextEncoder",
    "OpenCLIPTextEncoder",
    "PixelShuffleAutoencoder",
    "TextEncoder",
    "UNET_PRESETS",
    "build_unet3d",
    "check_video",
    "load_unet3d",
    "load_vae",
    "unet_output",
]
