"""A tiny ModelScope-shaped diffusers folder (unet/, vae/, text_encoder/, tokenizer/) written at test time.

It lets tests exercise the real pretrained-loading code (the same code that loads ModelScope T2V on a
networked machine) without any download.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch


def write_tiny_modelscope(folder: Path) -> Path:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from slowfast_vgen.models import build_unet3d

    torch.manual_seed(0)
    build_unet3d("tiny", in_channels=4, out_channels=4, cross_attention_dim=32).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    ).save_pretrained(folder / "vae")
    tok_dir = folder / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        vocab[s] = len(vocab)
        vocab[s + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    tokenizer.save_pretrained(tok_dir)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    return folder
