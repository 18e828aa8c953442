"""Frozen text encoders for free-text actions: ``list[str]`` -> token embeddings ``(B, L, D)``.

The paper uses ModelScope's frozen CLIP ViT-H/14 text tower (App. A.3.1). Implementations:

* :class:`HashTextEncoder`: offline, weight-free to ship: words are hashed into buckets of a frozen random
  embedding table fixed by a seed (plus sinusoidal positions). Distinct actions get distinct, stable
  embeddings that the UNet's cross-attention learns to read. Used by tiny presets and the built-in world.
* :class:`CLIPTextEncoder`: transformers ``CLIPTextModel`` + ``CLIPTokenizer`` from a diffusers-format
  folder (``text_encoder/``, ``tokenizer/``) or a hub id, as in ModelScope T2V.

The empty string is the unconditional ("null") prompt of classifier-free guidance.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Interface: frozen; ``forward(texts) -> (B, L, embed_dim)``."""

    embed_dim: int

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)

    def forward(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class HashTextEncoder(TextEncoder):
    """Bag of hashed words with positions; deterministic given ``seed``; nothing to download."""

    def __init__(self, embed_dim: int = 32, max_tokens: int = 8, buckets: int = 4096, seed: int = 0) -> None:
        super().__init__()
        self.embed_dim, self.max_tokens, self.buckets = embed_dim, max_tokens, buckets
        g = torch.Generator().manual_seed(seed)
        # Row 0 is padding; the table is a buffer: frozen, and saved with the model.
        table = torch.randn(buckets + 1, embed_dim, generator=g)
        table[0] = 0
        self.register_buffer("table", table)
        pos = torch.arange(max_tokens)[:, None] / (10_000 ** (torch.arange(0, embed_dim, 2) / embed_dim))
        pe = torch.zeros(max_tokens, embed_dim)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos), torch.cos(pos[:, : embed_dim // 2])
        self.register_buffer("positions", pe * 0.1)

    def token_ids(self, texts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.max_tokens, dtype=torch.long)  # (B, L)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())[: self.max_tokens]
            for col, word in enumerate(words):
                ids[row, col] = 1 + zlib.crc32(word.encode()) % self.buckets
        return ids

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids = self.token_ids(list(texts)).to(self.table.device)
        return self.table[ids] + self.positions  # (B, L, D)


class CLIPTextEncoder(TextEncoder):
    """The CLIP text tower of ModelScope T2V (diffusers layout) via transformers; last hidden state."""

    def __init__(self, pretrained: str, max_length: int = 77) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTokenizer

        from slowfast_vgen.models.unet import _from_pretrained

        self.tokenizer = _from_pretrained(
            CLIPTokenizer, pretrained, "tokenizer", None, what="CLIP tokenizer", marker="tokenizer_config.json"
        )
        self.model = _from_pretrained(CLIPTextModel, pretrained, "text_encoder", None, what="CLIP text encoder")
        self.model.requires_grad_(False)
        self.max_length = max_length
        self.embed_dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        return self.model(tokens.input_ids.to(device)).last_hidden_state  # (B, 77, D)
