"""Frozen text encoders for free-text actions: ``list[str]`` -> token embeddings ``(B, L, D)``.

The paper uses ModelScope's frozen CLIP ViT-H/14 text tower (App. A.3.1). Implementations:

* :class:`HashTextEncoder`: offline, weight-free to ship: words are hashed into buckets of a frozen random
  embedding table fixed by a seed (plus sinusoidal positions). Distinct actions get distinct, stable
  embeddings that the UNet's cross-attention learns to read. Used by tiny presets and the built-in world.
* :class:`CLIPTextEncoder`: transformers ``CLIPTextModel`` + ``CLIPTokenizer`` from a diffusers-format
  folder (``text_encoder/``, ``tokenizer/``) or a hub id, as in ModelScope T2V.
* :class:`OpenCLIPTextEncoder`: an OpenCLIP text tower (``open_clip_torch``), the encoder of ModelScope T2V's
  original, non-diffusers checkpoints (``open_clip_pytorch_model.bin``, ViT-H-14, penultimate layer).

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


class OpenCLIPTextEncoder(TextEncoder):
    """An OpenCLIP text tower, per-token states: ModelScope T2V's original text encoder (its ``FrozenOpenCLIPEmbedder``:
    ViT-H-14, the penultimate transformer layer, then the final layer norm).

    ``weights``: a local file with the OpenCLIP model's state dict (``.safetensors``, or a ``.bin``/``.pt`` read with
    ``torch.load(weights_only=True)``: data, never code); only the text tower's tensors are used. None: random
    weights (tests). ``layer``: ``"penultimate"`` (ModelScope) or ``"last"``.
    """

    def __init__(self, model: str = "ViT-H-14", weights: str | None = None, layer: str = "penultimate") -> None:
        super().__init__()
        import logging

        import open_clip

        from slowfast_vgen.errors import UserInputError

        if layer not in ("penultimate", "last"):
            raise UserInputError(f"OpenCLIP text layer {layer!r}; expected 'penultimate' or 'last'")
        if model not in open_clip.list_models():
            raise UserInputError(f"OpenCLIP model {model!r} is not known to open_clip; e.g. 'ViT-H-14' (ModelScope)")
        logging.getLogger().disabled, was = True, logging.getLogger().disabled  # its "no pretrained weights" warning
        try:
            clip = open_clip.create_model(model, pretrained=None, device="cpu")
        finally:
            logging.getLogger().disabled = was
        if weights is not None:
            state = _read_state_dict(weights, "OpenCLIP weights")
            used = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")  # the text tower
            text = {k: v for k, v in state.items() if k.startswith(used)}
            missing = [k for k in clip.state_dict() if k.startswith(used) and k not in text]
            if missing:
                raise UserInputError(f"OpenCLIP weights {weights!r}: no {missing[:3]} ... for {model!r}; expected the "
                                     f"state dict of an OpenCLIP {model}")
            clip.load_state_dict(text, strict=False)
        self.token_embedding, self.positional_embedding = clip.token_embedding, clip.positional_embedding
        self.transformer, self.ln_final = clip.transformer, clip.ln_final
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.tokenizer = open_clip.get_tokenizer(model)
        self.layers = len(self.transformer.resblocks) - (1 if layer == "penultimate" else 0)
        self.embed_dim = int(self.token_embedding.embedding_dim)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.token_embedding.weight.device
        x = self.token_embedding(self.tokenizer(list(texts)).to(device)) + self.positional_embedding
        if not getattr(self.transformer, "batch_first", True):
            x = x.transpose(0, 1)
        for block in self.transformer.resblocks[: self.layers]:
            x = block(x, attn_mask=self.attn_mask)
        if not getattr(self.transformer, "batch_first", True):
            x = x.transpose(0, 1)
        return self.ln_final(x)  # (B, 77, D)


def _read_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    from pathlib import Path

    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.io import read_safetensors

    if str(path).endswith(".safetensors"):
        return read_safetensors(path, what)[0]
    if not Path(path).is_file():
        raise UserInputError(f"{what} {str(path)!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # data only, never code
    except Exception as err:  # noqa: BLE001 - torch raises several types for a file it cannot read as data
        raise UserInputError(f"{what} {str(path)!r}: not a state dict of tensors "
                             f"({' '.join(str(err).split())[:160]})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserInputError(f"{what} {str(path)!r} holds a {type(state).__name__}; expected a state dict")
    return state
