"""Masked conditional diffusion (Eq. 1-2) and chunk sampling with three-way guidance (App. C.1)."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, TextToVideoSDPipeline

from slowfast_vgen.diffusion import ChunkSampler, MaskedDiffusion, context_mask, masked_mse
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.models import HashTextEncoder, build_unet3d


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet3d("tiny").eval()


def denoiser_of(unet):
    return lambda z, t, c: unet(z, t, encoder_hidden_states=c).sample


def test_context_mask():
    m = context_mask(torch.tensor([0, 2, 3]), 4)
    assert m.tolist() == [[False] * 4, [True, True, False, False], [True, True, True, False]]


def test_loss_ignores_predictions_on_context_frames():
    torch.manual_seed(0)
    target = torch.randn(3, 4, 6, 2, 2)
    pred = torch.randn(3, 4, 6, 2, 2)
    n_ctx = torch.tensor([1, 2, 5])
    loss = masked_mse(pred, target, n_ctx)
    changed = pred.clone()
    for b, k in enumerate(n_ctx.tolist()):
        changed[b, :, :k] += 100 * torch.randn_like(changed[b, :, :k])
    assert torch.equal(masked_mse(changed, target, n_ctx), loss)
    generated = pred.clone()
    generated[0, :, 3] += 1.0  # a generated frame does count
    assert masked_mse(generated, target, n_ctx) > loss
    # per-sample mean, then batch mean
    expected = torch.stack([((pred[b, :, k:] - target[b, :, k:]) ** 2).mean() for b, k in enumerate([1, 2, 5])]).mean()
    assert torch.allclose(loss, expected)


def test_training_loss_through_the_unet_inputs():
    """Eq. 1: context frames reach the UNet clean, generated frames noised; loss on f_g frames only."""
    diffusion = MaskedDiffusion(p_drop_image=0.0, p_drop_text=0.0)
    z0 = torch.randn(2, 4, 5, 2, 2)
    n_ctx = torch.tensor([2, 3])
    seen = {}

    def fake_denoiser(z, t, c):
        seen["z"], seen["t"] = z, t
        out = torch.zeros_like(z)
        out[:, :, :2] = 1e6  # garbage on context frames of both samples must not matter
        return out

    text, null = torch.ones(2, 3, 8), torch.zeros(1, 3, 8)
    loss, inputs = diffusion.training_loss(fake_denoiser, z0, n_ctx, text, null, torch.tensor([11, 12]))
    assert torch.equal(seen["z"][0, :, :2], z0[0, :, :2]) and torch.equal(seen["z"][1, :, :3], z0[1, :, :3])
    assert not torch.allclose(seen["z"][0, :, 2:], z0[0, :, 2:])
    noised = diffusion.add_noise(z0, inputs.noise, inputs.timesteps)
    assert torch.equal(seen["z"][0, :, 2:], noised[0, :, 2:])
    assert torch.isfinite(loss) and loss < 10  # the 1e6 on context frames was ignored
    # seeds fix the noise: same seeds, same inputs; another seed, other noise
    _, again = diffusion.training_loss(fake_denoiser, z0, n_ctx, text, null, torch.tensor([11, 12]))
    assert torch.equal(again.noise, inputs.noise) and torch.equal(again.timesteps, inputs.timesteps)
    _, other = diffusion.training_loss(fake_denoiser, z0, n_ctx, text, null, torch.tensor([13, 12]))
    assert not torch.equal(other.noise[0], inputs.noise[0]) and torch.equal(other.noise[1], inputs.noise[1])


def test_guidance_dropout_replaces_image_and_text_conditions():
    diffusion = MaskedDiffusion(p_drop_image=1.0, p_drop_text=1.0)
    z0 = torch.randn(2, 4, 4, 2, 2) + 3
    text, null = torch.ones(2, 3, 8), torch.zeros(1, 3, 8)
    inputs = diffusion.prepare(z0, torch.tensor([1, 2]), text, null, torch.tensor([1, 2]))
    assert inputs.drop_image.all() and inputs.drop_text.all()
    assert torch.equal(inputs.noisy[0, :, :1], torch.zeros_like(z0[0, :, :1]))
    assert torch.equal(inputs.text, null.expand(2, 3, 8))
    rates = MaskedDiffusion(p_drop_image=0.1, p_drop_text=0.15).prepare(
        torch.zeros(4000, 1, 2, 1, 1), torch.ones(4000, dtype=torch.long), torch.ones(4000, 1, 1),
        torch.zeros(1, 1, 1), torch.arange(4000),
    )
    assert abs(rates.drop_image.float().mean() - 0.1) < 0.02 and abs(rates.drop_text.float().mean() - 0.15) < 0.02


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(UserInputError, match="p_drop_text"):
        MaskedDiffusion(p_drop_text=1.5)
    with pytest.raises(UserInputError, match="p_drop_image"):
        MaskedDiffusion(p_drop_image=-0.1)
    with pytest.raises(UserInputError, match="n_context"):
        MaskedDiffusion().prepare(torch.zeros(1, 1, 3, 1, 1), torch.tensor([3]), torch.zeros(1, 1, 1),
                                  torch.zeros(1, 1, 1), torch.tensor([0]))
    with pytest.raises(UserInputError, match="scheduler"):
        ChunkSampler(MaskedDiffusion().scheduler_config(), scheduler="magic")


def test_context_frames_come_out_of_sampling_exactly(unet):
    sampler = ChunkSampler(MaskedDiffusion().scheduler_config(), num_inference_steps=3)
    enc = HashTextEncoder(embed_dim=32)
    context = torch.randn(2, 12, 3, 8, 8)
    out = sampler.sample(denoiser_of(unet), context, 2, enc(["go left", "stay"]), enc([""]),
                         torch.Generator().manual_seed(0))
    assert out.shape == (2, 12, 5, 8, 8)
    assert torch.equal(out[:, :, :3], context)
    assert torch.isfinite(out).all()


def test_three_way_guidance_is_one_batched_call_with_the_paper_formula(unet):
    sampler = ChunkSampler(MaskedDiffusion().scheduler_config(), guidance_image=2.0, guidance_text=5.0)
    enc = HashTextEncoder(embed_dim=32)
    calls = []

    def denoiser(z, t, c):
        calls.append(z.shape[0])
        return denoiser_of(unet)(z, t, c)

    context, x = torch.randn(1, 12, 2, 8, 8), torch.randn(1, 12, 3, 8, 8)
    text, null = enc(["go up"]), enc([""])
    t = torch.tensor(500)
    eps = sampler.guided_noise(denoiser, context, x, t, text, null)
    assert calls == [3]  # uncond, image, text in one call
    run = lambda ctx, c: denoiser_of(unet)(torch.cat([ctx, x], 2), t.expand(1), c)[:, :, 2:]  # noqa: E731
    e_u, e_i, e_t = run(torch.zeros_like(context), null), run(context, null), run(context, text)
    assert torch.allclose(eps, e_u + 2 * (e_i - e_u) + 5 * (e_t - e_i), atol=1e-4)


def test_text_only_sampling_equals_diffusers_text_to_video_pipeline(unet):
    """f_p = 0 and text guidance only: our sampler == TextToVideoSDPipeline (same UNet, scheduler, seed)."""
    diffusion = MaskedDiffusion()
    sampler = ChunkSampler(diffusion.scheduler_config(), "dpm-solver", num_inference_steps=5, guidance_text=5.0)
    enc = HashTextEncoder(embed_dim=32)
    text, null = enc(["go right"]), enc([""])
    shape = (1, 12, 4, 8, 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    ours = sampler.sample(denoiser_of(unet), torch.zeros(1, 12, 0, 8, 8), 4, text, null, latents=noise)

    pipe = TextToVideoSDPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(diffusion.scheduler_config(), algorithm_type="dpmsolver++"),
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt_embeds=text, negative_prompt_embeds=null, num_frames=4, height=64, width=64,
        num_inference_steps=5, guidance_scale=5.0, latents=noise.clone(), output_type="latent",
    ).frames
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_train_and_sample_consistently(kind):
    """The loss target follows ``prediction_type``, and a sampler built from the schedule reads the network's
    output the same way: an oracle network for a one-point data distribution samples exactly that point."""
    diffusion = MaskedDiffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, p_drop_image=0.0,
                                p_drop_text=0.0, prediction_type=kind)
    z0 = torch.rand(1, 3, 4, 2, 2) * 2 - 1
    abar = diffusion.scheduler.alphas_cumprod

    def oracle(z, t, c):  # the exact eps / v / z_0 for data == z0, on every frame
        a = abar[t.long()].view(-1, 1, 1, 1, 1)
        eps = (z - a.sqrt() * z0) / (1 - a).sqrt()
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * z0, "sample": z0.expand_as(z)}[kind]

    loss, inputs = diffusion.training_loss(oracle, z0, torch.tensor([1]), torch.ones(1, 2, 8), torch.zeros(1, 2, 8),
                                           torch.tensor([5]))
    assert loss < 1e-8
    assert torch.equal(diffusion.target(z0, inputs.noise, inputs.timesteps),
                       {"epsilon": inputs.noise, "sample": z0}.get(kind, diffusion.scheduler.get_velocity(
                           z0, inputs.noise, inputs.timesteps)))
    sampler = ChunkSampler(diffusion.scheduler_config(), "dpm-solver", num_inference_steps=10)
    assert sampler.scheduler.config.prediction_type == kind
    out = sampler.sample(oracle, z0[:, :, :1], 3, torch.ones(1, 2, 8), torch.zeros(1, 2, 8),
                         torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, z0, atol=1e-3, rtol=0)


def test_unknown_prediction_type_is_a_clear_error():
    with pytest.raises(UserInputError, match="prediction_type 'x0'"):
        MaskedDiffusion(prediction_type="x0")


@pytest.mark.parametrize("scheduler", ["dpm-solver", "ddim", "ddpm", "euler"])
def test_every_scheduler_keeps_the_context_exactly_and_feeds_it_unscaled(unet, scheduler):
    """Same contract for all schedulers: output (B, C, f_p + f_g, h, w), the context bit-identical, and the
    model sees the clean context as given (Euler scales only the noisy frames' input)."""
    sampler = ChunkSampler(MaskedDiffusion().scheduler_config(), scheduler, num_inference_steps=3)
    enc = HashTextEncoder(embed_dim=32)
    context = torch.randn(2, 12, 3, 8, 8) * 3
    seen = []

    def denoiser(z, t, c):
        seen.append(z.clone())
        return denoiser_of(unet)(z, t, c)

    out = sampler.sample(denoiser, context, 2, enc(["go left", "stay"]), enc([""]), torch.Generator().manual_seed(0))
    assert out.shape == (2, 12, 5, 8, 8)
    assert torch.equal(out[:, :, :3], context)
    assert torch.isfinite(out).all()
    assert len(seen) == 3
    for z in seen:  # branches [uncond (zeros), image, text]
        assert torch.equal(z[:2, :, :3], torch.zeros_like(context)) and torch.equal(z[2:4, :, :3], context)
        assert torch.equal(z[4:, :, :3], context)


@pytest.mark.parametrize("scheduler", ["euler", "dpm-solver"])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_thresholding_clips_the_predicted_clean_sample_for_every_scheduler(scheduler, kind):
    """An oracle for data outside [-1, 1]: with ``thresholding`` each scheduler (Euler included, which
    diffusers cannot threshold) ends on the clipped data; without it, on the data."""
    diffusion = MaskedDiffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type=kind)
    z0 = torch.linspace(-3, 3, 16).view(1, 1, 4, 2, 2)
    abar = diffusion.scheduler.alphas_cumprod

    def oracle(z, t, c):
        a = abar[t.round().long()].view(-1, 1, 1, 1, 1)
        eps = (z - a.sqrt() * z0) / (1 - a).sqrt()
        return eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0

    args = (oracle, z0[:, :, :1], 3, torch.ones(1, 2, 8), torch.zeros(1, 2, 8), torch.Generator().manual_seed(0))
    plain = ChunkSampler(diffusion.scheduler_config(), scheduler, num_inference_steps=10).sample(*args)
    torch.testing.assert_close(plain[:, :, 1:], z0[:, :, 1:], atol=1e-3, rtol=0)
    clipped = ChunkSampler(diffusion.scheduler_config(), scheduler, num_inference_steps=10, thresholding=True).sample(*args)
    assert torch.equal(clipped[:, :, :1], z0[:, :, :1])
    torch.testing.assert_close(clipped[:, :, 1:], z0[:, :, 1:].clamp(-1, 1), atol=1e-3, rtol=0)
