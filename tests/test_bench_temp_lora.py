"""``sfvgen bench temp-lora`` (Table 3's cost measurement): both modes run, in pixel and in latent space."""

import pytest

from slowfast_vgen.generation.bench import PRESETS, run_mode

PAPER4 = {"preset": "paper", "rank": 4}


def test_pixel_preset_reports_time_and_memory_per_mode():
    for with_lora in (False, True):
        r = run_mode("tiny", with_lora, chunks=2, steps=1, device="cpu", settings=PAPER4)
        assert r["chunks"] == 2 and r["seconds_per_chunk"] > 0 and r["peak_memory_mb"] > 0
        assert set(r["memory_mb_at_chunk"]) == {2}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_latent_presets_run_without_an_autoencoder_in_any_precision(dtype):
    """The ModelScope preset's path (random clean latents, no decoding, half precision on a GPU), on the tiny UNet."""
    assert PRESETS["modelscope"]["latent"] == (4, 32) and PRESETS["modelscope"]["unet"] == "modelscope"
    cfg = dict(unet="tiny", latent=(12, 8), embed=32, chunk=2, context=2)
    r = run_mode(cfg, True, chunks=2, steps=1, device="cpu", merge=True, dtype=dtype, settings=PAPER4)
    assert r["chunks"] == 2 and r["seconds_per_chunk"] > 0


def test_theta_stays_float32_under_a_half_precision_unet():
    import torch

    from slowfast_vgen.diffusion import MaskedDiffusion
    from slowfast_vgen.temp_lora import TempLoRA
    from slowfast_vgen.models import build_unet3d

    unet = build_unet3d("tiny").to(torch.bfloat16)
    learner = TempLoRA(unet, MaskedDiffusion(), rank=4, lr=1e-3)
    assert learner.params and {p.dtype for p in learner.params} == {torch.float32}
    z, null = torch.randn(1, 12, 4, 8, 8, dtype=torch.bfloat16), torch.randn(1, 4, 32)
    before = [p.detach().clone() for p in learner.params]
    learner.update(z[:, :, :2], z[:, :, 2:], null)
    learner.update(z[:, :, :2], z[:, :, 2:], null)  # B != 0 after the first: A moves too
    assert all(not torch.equal(a, p) for a, p in zip(before, learner.params))
    assert all(p.dtype == torch.float32 for n, p in unet.named_parameters() if "lora_" in n)


def test_components_time_each_phase_and_compose_the_per_chunk_ratio():
    from slowfast_vgen.generation.bench import run_components

    r = run_components("tiny", "cpu", "float32", PAPER4, repeats=1, steps=5)
    phases = r["phases"]
    assert set(phases) == {"sample_step_without_lora", "sample_step_lora_unmerged", "merge_unmerge",
                           "sample_step_merged", "update"}
    assert all(p["seconds"] >= 0 and p["peak_mb"] > 0 for p in phases.values())
    assert r["parameters"] == 1_333_516 and r["lora_parameters"] > 0 and r["update_steps"] == 1
    step0 = phases["sample_step_without_lora"]["seconds"]
    assert r["per_chunk_seconds"]["without"] == round(5 * step0, 3)
    expected = (5 * phases["sample_step_lora_unmerged"]["seconds"] + phases["update"]["seconds"]) / (5 * step0)
    assert abs(r["time_ratio"]["unmerged"] - expected) < 1e-3
    assert r["memory_ratio"]["merged"] > 0 and r["update_in_sampling_steps"] > 0


def test_the_end_to_end_children_run_the_same_cheaper_update():
    """--end-to-end runs each mode in a child process: the child gets the parent's settings, whole."""
    import json
    from dataclasses import asdict

    from slowfast_vgen.generation import bench
    from slowfast_vgen.temp_lora import TempLoRASettings

    parent = _parse(["--preset", "tiny", "--temp-lora", "paper", "--update-frames", "2", "--targets",
                     r"up_blocks.*to_q$", "--checkpointing"])
    assert (parent.update_frames, parent.target_modules, parent.checkpointing) == (2, r"up_blocks.*to_q$", True)
    child = _parse(["--preset", "tiny", "--settings-json", json.dumps(asdict(parent))])
    assert child == parent
    from slowfast_vgen.simulators.world import REVERSE

    # the default: the preset every command starts from, with the world's action reversals (the bench's chunks)
    assert _parse(["--preset", "tiny"]) == TempLoRASettings.build({"preset": "episodic-lazy"}, reverse_actions=REVERSE)
    r = bench.run_mode("tiny", True, chunks=1, steps=1, device="cpu", settings=TempLoRASettings.build(parent, rank=4))
    assert r["temp_lora"]["update_frames"] == 2 and r["temp_lora"]["checkpointing"]
    all_layers = bench.run_mode("tiny", True, chunks=1, steps=1, device="cpu", settings=PAPER4)["temp_lora"]["lora_layers"]
    assert 0 < r["temp_lora"]["lora_layers"] < all_layers  # the decoder's to_q only


def _parse(argv):
    """The Temp-LoRA settings of `sfvgen bench temp-lora --components ARGV` as main() builds them (components_main
    patched out)."""
    from unittest import mock

    from slowfast_vgen.generation import bench

    with mock.patch.object(bench, "components_main", side_effect=lambda args, settings: settings):
        return bench.main(["--components", *argv])


def test_the_bench_samples_at_the_presets_guidance_as_the_demo_does():
    from unittest import mock

    from slowfast_vgen.generation import bench

    def guidance(argv):
        with mock.patch.object(bench, "components_main", side_effect=lambda args, settings: tuple(args.guidance)):
            return bench.main(["--components", "--preset", "tiny", *argv])

    assert guidance(["--temp-lora", "paper"]) == (2.0, 5.0)  # Table 3's setting
    assert guidance([]) == (1.0, 1.0)  # the rehearsal presets were measured unguided
    assert guidance(["--guidance", "2", "5"]) == (2.0, 5.0)
