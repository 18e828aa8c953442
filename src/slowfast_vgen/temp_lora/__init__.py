"""Temp-LoRA: fast learning of episodic memory at inference time (paper Sec. 3.2, Eq. 3, Algorithm 1a).

    settings.py  every setting, declared once; the presets every command, YAML, callback and loop reads
    learner.py   TempLoRA: Eq. 3's update after each chunk (Alg. 1a l.11-14), the guards, when it writes
    write.py     write policies: what a step trains on (the chunk's clip, Alg. 1a; or the episode's rehearsal)
    read.py      read policies: when generation applies Theta (always, as the paper; or where it recognises the place)
    adapter.py   Theta as a peft LoRA in the UNet: inject, reset, merge, per-sample Theta, remove
    storage.py   the memory on disk (safetensors): Theta, the optimizer's state, the episode
"""

from slowfast_vgen.temp_lora.adapter import ADAPTER, LoRAAdapter
from slowfast_vgen.temp_lora.learner import TempLoRA, UpdateRecord
from slowfast_vgen.temp_lora.settings import (
    DEFAULT_PRESET, DEFAULT_TARGETS, PRESET_GUIDANCE, PRESETS, VARIANTS, TempLoRASettings, add_options,
    read_reverse_actions, settings_from_args,
)

__all__ = [
    "ADAPTER", "DEFAULT_PRESET", "DEFAULT_TARGETS", "LoRAAdapter", "PRESETS", "PRESET_GUIDANCE", "TempLoRA",
    "TempLoRASettings", "UpdateRecord", "VARIANTS", "add_options", "read_reverse_actions", "settings_from_args",
]
