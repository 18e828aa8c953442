"""Shard sets (docs/data-format.md), by layer: ``format`` (tar + manifest + verify), ``videoio`` (member codecs),
``write`` (resumable writing of a whole set), ``read`` (clip and episode datasets), ``loader`` (split over ranks
and workers, exact resume), ``stream`` (URLs through the webdataset pipeline), ``latent_cache`` (latents encoded once),
``datamodule`` (the LightningDataModule)."""
