import pytest
import torch

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError
from slowfast_vgen.models import (
    DiffusersVAE,
    HashTextEncoder,
    PixelShuffleAutoencoder,
    build_unet3d,
    check_video,
    load_unet3d,
)


def test_pixel_autoencoder_is_lossless_and_uses_diffusers_layout():
    video = torch.rand(2, 5, 3, 16, 16)
    ae = PixelShuffleAutoencoder(factor=2)
    z = ae.encode(video)
    assert z.shape == (2, 12, 5, 8, 8)  # (B, C, F, h, w)
    assert torch.allclose(ae.decode(z), video, atol=1e-6)
    # frame t of the latents is frame t of the video
    assert torch.allclose(ae.decode(z[:, :, 3:4]), video[:, 3:4], atol=1e-6)


def test_vae_frame_by_frame_matches_per_frame_calls():
    ae = DiffusersVAE.tiny(frames_per_call=2)
    video = torch.rand(1, 3, 3, 16, 16)
    z = ae.encode(video)
    assert z.shape == (1, 4, 3, 8, 8)
    single = torch.cat([ae.encode(video[:, i : i + 1]) for i in range(3)], dim=2)
    assert torch.allclose(z, single, atol=1e-5)
    assert ae.decode(z).shape == video.shape
    assert not any(p.requires_grad for p in ae.parameters())


def test_hash_text_encoder_is_deterministic_and_distinguishes_actions():
    enc = HashTextEncoder(embed_dim=32)
    a = enc(["go left", "go right", "Go  LEFT!", ""])
    assert a.shape == (4, 8, 32)
    assert torch.equal(a[0], a[2])  # case and punctuation do not matter
    assert not torch.equal(a[0], a[1])
    assert torch.equal(HashTextEncoder(embed_dim=32)(["go left"]), a[:1])  # same seed, same embedding


def test_check_video_rejects_bad_layout_and_range():
    with pytest.raises(UserInputError, match=r"\(B, T, C, H, W\)"):
        check_video(torch.rand(3, 16, 16))
    with pytest.raises(UserInputError, match=r"\[0, 1\]"):
        check_video(torch.rand(1, 2, 3, 4, 4) * 255)


def test_unet_presets_and_bad_preset():
    unet = build_unet3d("tiny")
    assert unet.config.block_out_channels == (32, 64)
    assert build_unet3d("tiny", in_channels=4, out_channels=4).config.in_channels == 4
    with pytest.raises(UserInputError, match="huge"):
        build_unet3d("huge")


def test_load_unet3d_from_local_diffusers_folder(tmp_path):
    unet = build_unet3d("tiny")
    unet.save_pretrained(tmp_path / "model" / "unet")
    loaded = load_unet3d(str(tmp_path / "model"))
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), loaded.state_dict().values()))


def test_load_unet3d_offline_gives_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="neither a local folder"):
        load_unet3d("someone/not-a-real-model-xyz")
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        load_unet3d(str(tmp_path))


def test_mixed_length_collate_drops_oldest_context_first():
    from slowfast_vgen.datamodules.common import crop_sample

    video = torch.arange(8.0)[:, None, None, None].expand(8, 3, 2, 2)  # frame t has value t
    out = crop_sample({"video": video, "n_context": 3, "seed": 0, "action": "go left"}, length=3)
    # frames 0-2 came from the previous action: keep the newest one as context, then generated frames 3, 4
    assert out["video"][:, 0, 0, 0].tolist() == [2.0, 3.0, 4.0] and out["n_context"] == 1
    out = crop_sample({"video": video, "n_context": 3, "seed": 0, "action": "x"}, length=6)
    assert out["video"][:, 0, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0] and out["n_context"] == 1
    out = crop_sample({"video": video, "n_context": 3, "seed": 0, "action": "x"}, length=7)
    assert out["video"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0] and out["n_context"] == 2


def test_openclip_text_encoder_gives_per_token_states_and_loads_only_data(tmp_path):
    """ModelScope's original text encoder via open_clip (random weights here: no download)."""
    import pytest
    import torch
    from safetensors.torch import save_file

    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.models import OpenCLIPTextEncoder

    enc = OpenCLIPTextEncoder("ViT-S-32")
    out = enc(["go left", ""])
    assert out.shape == (2, 77, 384) and enc.embed_dim == 384 and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1]) and not any(p.requires_grad for p in enc.parameters())
    last = OpenCLIPTextEncoder("ViT-S-32", layer="last")
    assert len(last.transformer.resblocks[: last.layers]) == len(enc.transformer.resblocks[: enc.layers]) + 1
    # weights from a file: the text tower's tensors are used; a file with code or without them is refused
    state = {k: v.clone() + 0.01 for k, v in enc.state_dict().items() if k != "attn_mask"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    loaded = OpenCLIPTextEncoder("ViT-S-32", weights=str(tmp_path / "clip.safetensors"))
    assert torch.equal(loaded.token_embedding.weight, state["token_embedding.weight"])
    torch.save({"token_embedding.weight": state["token_embedding.weight"]}, tmp_path / "partial.bin")
    with pytest.raises(UserInputError, match="expected the state dict of an OpenCLIP"):
        OpenCLIPTextEncoder("ViT-S-32", weights=str(tmp_path / "partial.bin"))
    torch.save({"fn": print}, tmp_path / "code.bin")
    with pytest.raises(UserInputError, match="not a state dict of tensors"):
        OpenCLIPTextEncoder("ViT-S-32", weights=str(tmp_path / "code.bin"))
