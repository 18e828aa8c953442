"""Every setting of Temp-LoRA, declared once, and the presets that every command, YAML, callback and loop reads.

A setting's command-line flag, type and help come from its field here (:func:`add_options`), so ``sfvgen demo``,
``sfvgen generate``, ``sfvgen bench temp-lora`` and ``sfvgen bench memory`` offer the same options with the same
names; a YAML (the :class:`slowfast_vgen.callbacks.TempLoRA` callback, the slow-fast loop's ``temp_lora``) uses the
field names, optionally over a ``preset``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from slowfast_vgen.errors import UserInputError

# Table 4's fast-learning rows: ours (Eq. 3), "w original Temp-LoRA", "wo Local Learning Rule".
VARIANTS = ("temp-lora", "original", "no-local")
# What each update step trains on: "chunk" = the chunk's own X_i (+) Y_i (Alg. 1a l.11); "rehearsal" = that clip and
# the episode so far (every window, reversed, and the way back from its end; docs/memory.md, Search 11).
WRITES = ("chunk", "rehearsal")
# When the update is made: "every-chunk" = after every chunk (Alg. 1a l.10); "new-ground" = not after a chunk that the
# read policy recognised (read_gate): a return along a written path adds nothing new to write (issue 36).
WRITE_WHERE = ("every-chunk", "new-ground")
# What the update's clips are conditioned on: "none" = the empty prompt (Eq. 3); "action" = each clip's action text.
TEXT_CONDITIONS = ("none", "action")
# The paper does not name the wrapped layers: the attention projections of the spatial and temporal
# transformers (to_q/to_k/to_v/to_out.0 match transformer_in, attentions and temp_attentions).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _opt(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    """A setting that is also a command-line option (``flag``: its name when not the field's, dashed)."""
    return field(default=default, metadata={"help": help, "flag": flag, **kw})


@dataclass(frozen=True)
class TempLoRASettings:
    """The fast learner's settings (paper Sec. 3.2, App. C.1, and the write / read policies of docs/memory.md)."""

    # -- the paper's learner: W' = Phi + Theta (Eq. 6/10), Adam on Theta after every chunk (Alg. 1a l.11-14)
    rank: int = _opt(32, "LoRA rank (paper: 32)")
    alpha: float | None = None  # not given by the paper: default = rank (scaling 1)
    target_modules: tuple[str, ...] | str = _opt(
        DEFAULT_TARGETS, "LoRA target modules: comma-separated names, or a regular expression (peft), e.g. "
        "'up_blocks.*(to_q|to_k|to_v|to_out.0)' for the decoder only", flag="--targets")
    lr: float = _opt(1e-4, "learning rate (paper: 1e-4)")
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    steps_per_chunk: int = _opt(1, "gradient steps after each chunk (not given by the paper)")
    lr_ratio: float = _opt(1.0, "learning rate of LoRA's B matrices over the A matrices' (LoRA+: B learns faster; 1: "
                           "one rate, the paper)")
    variant: str = _opt("temp-lora", "Table 4's update: temp-lora (Eq. 3), original, no-local", choices=VARIANTS)
    seed: int = 0  # the LoRA initialisation and every update's noise
    # -- guards (App. D.5: high learning rates are unstable): a rolled-back update leaves Theta as it was
    explode_factor: float = _opt(20.0, "roll back an update whose gradient norm exceeds this multiple of the median "
                                 "of the earlier ones (inf: off)")
    loss_guard: float = _opt(0.0, "roll back an update that raises its own first batch's loss past this factor (0: off)")
    # -- the write policy: what each step trains on
    write: str = _opt("chunk", "chunk: the chunk's own clip (Alg. 1a); rehearsal: the whole episode so far",
                      choices=WRITES)
    write_where: str = _opt("every-chunk", "every-chunk: update after every chunk (Alg. 1a); new-ground: not after a "
                            "chunk the memory recognised (read_gate)", choices=WRITE_WHERE)
    write_every: int = _opt(1, "write after every k-th chunk of new ground only, and before Theta is next read when a "
                            "chunk waits unwritten (1: after every chunk; the rehearsal writes the waiting ones too)")
    draws: int = _opt(1, "rehearsal: at most this many clips per step (the chunk's own always in)")
    reverse: bool = _opt(False, "rehearsal: also every window reversed in time, under the reverse action")
    turns: bool = _opt(False, "rehearsal: also the way back from each window's end, under the reverse action")
    clean_context: int = _opt(0, "clean leading frames of each update clip, out of the loss (0: Eq. 3)")
    text_condition: str = _opt("none", "update clips under the empty prompt (Eq. 3) or their action's text",
                               choices=TEXT_CONDITIONS)
    reverse_actions: dict[str, str] | None = None  # action -> its reverse, declared with the data
    update_frames: int = _opt(0, "train on the last N frames of input + output only (0: all; a cheaper update)")
    checkpointing: bool = _opt(False, "recompute activations in the update's backward (less memory, more time)")
    # -- the read policy: when generation applies Theta
    read_gate: float = _opt(0.0, "apply Theta to a chunk only when a rehearsed clip starts within this fraction of "
                            "the median distance from its context (0: every chunk, the paper)")
    read_text_match: float = _opt(1.0, "read_gate: the rehearsed clips looked at are those under the text nearest "
                                  "the chunk's action, if their embeddings' similarity 1 - |a-b|^2/(|a|^2+|b|^2) is at "
                                  "least this (1: the same text; lower: paraphrased free-text actions)")

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, value: Any) -> None:
            if not ok:
                raise UserInputError(f"Temp-LoRA: {what}, got {value!r}")

        need(self.variant in VARIANTS, f"variant is one of {list(VARIANTS)}", self.variant)
        need(self.write in WRITES, f"write is one of {list(WRITES)}", self.write)
        need(self.write_where in WRITE_WHERE, f"write_where is one of {list(WRITE_WHERE)}", self.write_where)
        need(self.write_where == "every-chunk" or self.read_gate > 0, f"write_where {self.write_where!r} needs "
             "read_gate > 0 (the recognition says where Theta is read)", self.read_gate)
        need(self.text_condition in TEXT_CONDITIONS, f"text_condition is one of {list(TEXT_CONDITIONS)}",
             self.text_condition)
        for name in ("rank", "steps_per_chunk", "draws", "write_every"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} >= 1", getattr(self, name))
        for name in ("clean_context", "update_frames"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{name} >= 0", getattr(self, name))
        need(self.lr_ratio > 0, "lr_ratio > 0", self.lr_ratio)
        for name in ("lr", "loss_guard", "read_gate", "weight_decay"):  # lr 0: stores nothing (a control)
            need(getattr(self, name) >= 0, f"{name} >= 0", getattr(self, name))
        need(self.explode_factor > 0, "explode_factor > 0 (inf: off)", self.explode_factor)
        need(-1 <= self.read_text_match <= 1, "read_text_match is a similarity in [-1, 1]", self.read_text_match)
        rehearsal = {"reverse": self.reverse, "turns": self.turns, "draws": self.draws > 1, "read_gate": self.read_gate > 0}
        used = sorted(k for k, v in rehearsal.items() if v)
        need(self.write == "rehearsal" or not used, "reverse / turns / draws > 1 / read_gate are options of write "
             "'rehearsal' (they need the episode)", used)
        need(self.write_every == 1 or (self.write == "rehearsal" and self.write_where == "new-ground"), "write_every "
             "> 1 needs write 'rehearsal' (a later write trains on the chunks that waited) and write_where 'new-ground' "
             "(they are written before Theta is read)", self.write_every)
        need(self.variant == "temp-lora" or self.write == "chunk", "write 'rehearsal' is an option of variant "
             "'temp-lora'", self.variant)

    @classmethod
    def build(cls, settings: TempLoRASettings | dict[str, Any] | None = None, **options: Any) -> TempLoRASettings:
        """``settings`` (an object, or a dict that may name a ``preset`` to start from) with ``options`` over it;
        an unknown name is a one-line error."""
        if isinstance(settings, TempLoRASettings):
            base = {f.name: getattr(settings, f.name) for f in fields(cls)}
        else:
            base = dict(settings or {})
        merged = {**base, **options}
        preset = merged.pop("preset", None)
        if preset is not None:
            merged = {**preset_settings(preset), **merged}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise UserInputError(f"Temp-LoRA settings {unknown} are not known; expected some of {sorted(known)}")
        for name in ("target_modules", "betas"):  # a YAML or JSON list is the tuple
            if isinstance(merged.get(name), list):
                merged[name] = tuple(merged[name])
        return cls(**merged)

    def turn_back_note(self) -> str:
        """Why the rehearsal runs without turn-back clips (empty when it runs with them, or does not need them)."""
        if self.write == "rehearsal" and self.turns and self.text_condition == "action" and not self.reverse_actions:
            return ("no action reversals are declared (the data's manifest, the experiment's reverse_actions or "
                    "--reverse-actions FILE): the rehearsal runs without turn-back clips")
        return ""


# Temp-LoRA settings by name. "paper": Sec. 3.2 / App. C.1 as the paper states them (rank 32, lr 1e-4, Eq. 3: the
# whole clip noised, no text; one step per chunk, which the paper leaves open). "episodic": Search 11 of
# docs/memory.md: after each chunk the whole episode so far is rehearsed in one batch (every window, reversed, and
# the way back from each), clean context under the action's text. "episodic-gated": "episodic" written twice as long
# on twice the clips (60 steps of 24) and read only where the memory recognises the chunk's start (read_gate 1: its
# nearest rehearsed clip under the chunk's action starts nearer than the median clip), Search 12. "episodic-fast":
# the same memory at an eighteenth of the update's work (Searches 13-14): 20 steps of at most 8 clips at lr 1.5e-3,
# LoRA+ (B at 8x A's rate) and no update after a chunk the memory recognised. "episodic-lazy" (Search 15): the same
# rehearsal written less often and longer, every third chunk of new ground and before Theta is read (30 steps of 8).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(rank=32, lr=1e-4, steps_per_chunk=1),
    "episodic": dict(rank=32, lr=1e-3, steps_per_chunk=30, write="rehearsal", draws=12, reverse=True, turns=True,
                     clean_context=4, text_condition="action", explode_factor=math.inf),
}
PRESETS["episodic-gated"] = dict(PRESETS["episodic"], steps_per_chunk=60, draws=24, read_gate=1.0)
PRESETS["episodic-fast"] = dict(PRESETS["episodic"], lr=1.5e-3, steps_per_chunk=20, draws=8, lr_ratio=8.0,
                                read_gate=1.0, write_where="new-ground")
PRESETS["episodic-lazy"] = dict(PRESETS["episodic-fast"], steps_per_chunk=30, write_every=3)
# The guidance scales (image, text) each preset was measured with: the paper's 2 / 5 (App. C.1); the rehearsal's
# memory was found and measured unguided (docs/memory.md, Searches 11-12).
PRESET_GUIDANCE: dict[str, tuple[float, float]] = {"paper": (2.0, 5.0), "episodic": (1.0, 1.0),
                                                   "episodic-gated": (1.0, 1.0), "episodic-fast": (1.0, 1.0),
                                                   "episodic-lazy": (1.0, 1.0)}
# What every command runs unless told otherwise: the cheapest configuration found that meets the memory bar (issue 36).
DEFAULT_PRESET = "episodic-lazy"


def preset_settings(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UserInputError(f"Temp-LoRA preset {name!r} is not known; expected one of {sorted(PRESETS)}")
    return dict(PRESETS[name])


def read_reverse_actions(path: str | Path) -> dict[str, str]:
    """A reversal file: a JSON object ``{"action": "its reverse", ...}`` (both directions are listed)."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"--reverse-actions {str(path)!r}: file not found; expected a JSON object "
                             '{"action": "its reverse"}') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"--reverse-actions {str(path)!r}: not JSON ({err}); expected an object "
                             '{"action": "its reverse"}') from None
    return check_reverse_actions(table, f"--reverse-actions {str(path)!r}")


def check_reverse_actions(table: Any, where: str) -> dict[str, str]:
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise UserInputError(f"{where}: expected an object of action texts to their reverse texts, got "
                             f"{str(table)[:80]!r}")
    return dict(table)


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _option_fields() -> list:
    return [f for f in fields(TempLoRASettings) if "help" in f.metadata]


def add_options(parser: argparse.ArgumentParser) -> None:
    """The Temp-LoRA options of every command: a preset, a reversal file, each setting over the preset."""
    group = parser.add_argument_group("Temp-LoRA (docs/memory.md)")
    group.add_argument("--temp-lora", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                       help=f"settings to start from (default: {DEFAULT_PRESET}, the configuration that remembers; "
                       "paper: as the paper states them)")
    group.add_argument("--reverse-actions", default=None, metavar="FILE",
                       help="JSON {action: its reverse}: the texts of reversed and turn-back clips (default: declared "
                       "with the data)")
    for f in _option_fields():
        text = f"{f.metadata['help']}; overrides the preset"
        if isinstance(f.default, bool):
            group.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = str if f.name == "target_modules" else type(f.default)
            group.add_argument(_flag(f), dest=f.name, type=kind, default=None, choices=f.metadata.get("choices"),
                               help=text)


def settings_from_args(args: argparse.Namespace, reverse_actions: dict[str, str] | None = None) -> TempLoRASettings:
    """The settings :func:`add_options` parsed: the preset, each given option over it, and the action reversals
    (``--reverse-actions FILE``, else ``reverse_actions``: those declared with the data)."""
    given = {f.name: getattr(args, f.name) for f in _option_fields() if getattr(args, f.name) is not None}
    if "target_modules" in given:
        given["target_modules"] = parse_targets(given["target_modules"])
    table = read_reverse_actions(args.reverse_actions) if args.reverse_actions else reverse_actions
    return TempLoRASettings.build({"preset": args.temp_lora, **given}, reverse_actions=dict(table) if table else None)


def parse_targets(text: str) -> str | tuple[str, ...]:
    """``--targets``: "to_q,to_k" -> names; anything with a regular-expression character -> the regex (peft)."""
    if any(ch in text for ch in "*()|[]^$\\+?"):
        return text
    return tuple(t.strip() for t in text.split(",") if t.strip())
