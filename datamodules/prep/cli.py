"""``sfvgen data ...``: build, verify, record, convert, cache-latents. ``main(argv)`` returns an exit code.

Bad input raises :class:`UserInputError` (argparse errors included), which the top-level CLI prints as one line
with exit code 2. Results are printed as JSON on stdout; progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from slowfast_vgen.errors import ArgumentParser, UserInputError, positive_int

RECORD_ENVS = ("vizdoom", "memory-maze")
# the options of one simulator (argparse dest -> flag); the other simulator refuses them
RECORD_OPTIONS = {"vizdoom": {"policy": "--policy", "loops": "--loops", "scenario": "--scenario", "map": "--map",
                              "resolution": "--resolution"},
                  "memory-maze": {"maze": "--maze", "patterns": "--patterns", "max_steps": "--max-steps"}}
UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_bytes(text: str) -> int:
    """``"256MB"``, ``"64m"``, ``"1GB"``, ``"100000"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise UserInputError(f"size {text!r}: expected a number with an optional unit (KB, MB, GB), e.g. 256MB")
    return max(1, int(float(m.group(1)) * UNITS[m.group(2).lower()]))


def make_autoencoder(spec: str) -> Any:
    """``pixelshuffle[:FACTOR]`` (lossless, no weights) or ``diffusers:PATH`` (a diffusers AutoencoderKL)."""
    from slowfast_vgen.models.autoencoder import DiffusersVAE, PixelShuffleAutoencoder

    name, _, arg = spec.partition(":")
    if name == "pixelshuffle":
        try:
            return PixelShuffleAutoencoder(factor=int(arg or 2))
        except ValueError:
            raise UserInputError(f"autoencoder {spec!r}: expected pixelshuffle:FACTOR with an integer factor") from None
    if name == "diffusers" and arg:
        return DiffusersVAE.from_pretrained(arg)
    raise UserInputError(f"autoencoder {spec!r}: expected pixelshuffle[:FACTOR] or diffusers:PATH")


def _bytes_arg(text: str) -> int:
    try:
        return parse_bytes(text)
    except UserInputError as err:  # argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(err)) from None


GT_OUT_HELP = ("also gather X.poses.{jsonl,csv} sidecars (frame, pose fields, optional revisit_of) into this "
               "ground-truth file for `build --gt`")


def build_parser() -> argparse.ArgumentParser:
    from slowfast_vgen.datamodules.shards.videoio import PIX_FMTS, VIDEO_KINDS
    from slowfast_vgen.simulators.memory_maze import MAZES, PATTERNS
    from slowfast_vgen.simulators.vizdoom import POLICIES

    parser = ArgumentParser(prog="sfvgen data", description="Turn videos and action logs into shards; check shards.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("build", help="videos + action file (JSONL/CSV) -> shard set (resumable)")
    p.add_argument("videos", help="folder of videos (searched recursively)")
    p.add_argument("actions", help="action file: JSONL or CSV with video, start, end, action")
    p.add_argument("out", help="output shard directory (rerun the same command to resume)")
    p.add_argument("--video", choices=VIDEO_KINDS, default="mp4", help="storage: mp4 (lossy), mp4-lossless, npy")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality for --video mp4 (lower is better)")
    p.add_argument("--gop", type=positive_int, default=16, help="keyframe interval (frames)")
    p.add_argument("--pix-fmt", choices=PIX_FMTS, default="yuv420p",
                   help="chroma of --video mp4 (yuv444p: sharper colour, for game/synthetic frames)")
    p.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: keep)")
    p.add_argument("--size", default=None, help="resize: shorter side (64) or HEIGHTxWIDTH (center crop)")
    p.add_argument("--segment-frames", type=positive_int, default=256, help="frames per sample (episode segment)")
    p.add_argument("--overlap", type=int, default=16, help="context frames repeated from the previous segment")
    p.add_argument("--shard-size", type=_bytes_arg, default="256MB", help="target shard size (e.g. 256MB)")
    p.add_argument("--domain", default="generic", help="domain name stored with each sample (robot: f_p = 1)")
    p.add_argument("--first-frame-only", action=argparse.BooleanOptionalAction, default=None,
                   help="f_p = 1 for every video (default: only for the robot domain)")
    p.add_argument("--limit-shards", type=positive_int, default=None, help="stop after writing N shards (resumable)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing shard set in OUT first")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--gt", default=None, help="per-frame ground truth (JSONL: video, frame, pose fields, optional "
                                              "revisit_of) for the revisit benchmark (docs/data-format.md)")
    p.add_argument("--reverse-actions", default=None, metavar="FILE",
                   help="JSON {action: its reverse}, kept in the manifest: the texts of Temp-LoRA's reversed and "
                        "turn-back clips on this data (docs/memory.md)")

    p = sub.add_parser("verify", help="check a shard set against its manifest (sizes, sha256, crc32)")
    p.add_argument("shards")
    p.add_argument("--deep", action="store_true", help="also parse metadata and decode every video")

    p = sub.add_parser("record", help="record revisit episodes straight into shards (the Game domain): ViZDoom "
                                      "(default) or Memory Maze")
    p.add_argument("out")
    p.add_argument("--env", choices=RECORD_ENVS, default="vizdoom", help="the simulator (docs/data-format.md)")
    p.add_argument("--episodes", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=0, help="memory-maze: 0 for train, 1 for test (disjoint mazes)")
    doom = p.add_argument_group("ViZDoom (--env vizdoom)")
    doom.add_argument("--policy", choices=POLICIES, default=None, help="default: mixed")
    doom.add_argument("--loops", type=positive_int, default=None, help="leave-and-return trips per episode (1)")
    doom.add_argument("--scenario", default=None, help="a ViZDoom scenario name or a .wad path (my_way_home)")
    doom.add_argument("--map", default=None, help="default: map01")
    doom.add_argument("--resolution", default=None, help="ViZDoom screen resolution, e.g. 160x120 (default), 320x240")
    maze = p.add_argument_group("Memory Maze (--env memory-maze; 64x64 frames)")
    maze.add_argument("--maze", default=None, help=f"maze size: {', '.join(MAZES)} (default: 9x9)")
    maze.add_argument("--patterns", default=None,
                      help=f"revisit patterns, comma-separated, one episode each in turn ({','.join(PATTERNS)})")
    maze.add_argument("--max-steps", type=positive_int, default=None, help="steps per episode at most (600)")
    p.add_argument("--video", choices=VIDEO_KINDS, default="mp4-lossless")
    p.add_argument("--shard-size", type=_bytes_arg, default="64MB")
    p.add_argument("--limit-shards", type=positive_int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("convert", help="convert a recording layout to an action file for `build`")
    conv = p.add_subparsers(dest="layout", required=True, parser_class=ArgumentParser)
    c = conv.add_parser("generic", help="videos with X.actions.{jsonl,csv,txt} sidecars (start, [end,] action)")
    c.add_argument("src")
    c.add_argument("--out", required=True)
    c.add_argument("--domain", default="generic")
    c.add_argument("--gt-out", default=None, help=GT_OUT_HELP)
    c = conv.add_parser("epic", help="EPIC-KITCHENS-style narration CSV")
    c.add_argument("csv")
    c.add_argument("--videos", required=True, help="folder holding <video_id>.MP4 files")
    c.add_argument("--out", required=True)
    c.add_argument("--domain", default="human")
    c = conv.add_parser("keylog", help="videos with X.keylog.{jsonl,csv} keyboard/mouse logs -> text actions")
    c.add_argument("src")
    c.add_argument("--out", required=True)
    c.add_argument("--bin", type=float, default=0.25, help="seconds per action bin")
    c.add_argument("--keymap", default=None, help="JSON file {key: action text} replacing the WASD default")
    c.add_argument("--turn-threshold", type=float, default=40.0, help="mouse pixels per second that count as a turn")
    c.add_argument("--idle", default="stay", help="text for bins without input ('none': leave them unlabelled)")
    c.add_argument("--domain", default="game")
    c.add_argument("--gt-out", default=None, help=GT_OUT_HELP)

    p = sub.add_parser("cache-latents", help="encode a shard set once with the frozen autoencoder")
    p.add_argument("shards")
    p.add_argument("cache", help="cache root (a subdirectory per source/autoencoder/resolution is made)")
    p.add_argument("--autoencoder", required=True, help="pixelshuffle[:FACTOR] or diffusers:PATH")
    p.add_argument("--resolution", default=None, help="shorter side or HEIGHTxWIDTH (default: as stored)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    return parser


def _record(args: argparse.Namespace) -> dict[str, Any]:
    """``record``: the chosen simulator's recorder, with only its own options (the other one's are refused)."""
    other = [flag for env, opts in RECORD_OPTIONS.items() if env != args.env for dest, flag in opts.items()
             if getattr(args, dest) is not None]
    if other:
        raise UserInputError(f"record --env {args.env} does not take {', '.join(other)} (another simulator's); it "
                             f"takes {', '.join(RECORD_OPTIONS[args.env].values())}")
    own = {dest: getattr(args, dest) for dest in RECORD_OPTIONS[args.env] if getattr(args, dest) is not None}
    common = {"episodes": args.episodes, "seed": args.seed, "video": args.video, "shard_bytes": args.shard_size,
              "limit_shards": args.limit_shards, "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.env == "memory-maze":
        from slowfast_vgen.datamodules.prep.record_maze import record_maze_shards

        return record_maze_shards(args.out, **own, **common)
    from slowfast_vgen.datamodules.prep.record import record_shards

    if "map" in own:
        own["doom_map"] = own.pop("map")
    return record_shards(args.out, **own, **common)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "build":
        from slowfast_vgen.datamodules.prep.build import build_shards

        out = build_shards(args.videos, args.actions, args.out, video=args.video, crf=args.crf, gop=args.gop,
                           pix_fmt=args.pix_fmt, fps=args.fps, size=args.size, segment_frames=args.segment_frames,
                           overlap=args.overlap, shard_bytes=args.shard_size, domain=args.domain,
                           first_frame_only=args.first_frame_only, limit_shards=args.limit_shards,
                           overwrite=args.overwrite, progress=not args.no_progress, gt=args.gt,
                           reverse_actions=args.reverse_actions)
    elif args.command == "verify":
        from slowfast_vgen.datamodules.shards.format import verify_shards

        out = verify_shards(args.shards, deep=args.deep)
        print(json.dumps(out, indent=1))
        return 0 if out["ok"] else 1
    elif args.command == "record":
        out = _record(args)
    elif args.command == "convert":
        from slowfast_vgen.datamodules.prep import convert

        if args.layout == "generic":
            out = convert.convert_generic(args.src, args.out, domain=args.domain, gt_out=args.gt_out)
        elif args.layout == "epic":
            out = convert.convert_epic(args.csv, args.videos, args.out, domain=args.domain)
        else:
            out = convert.convert_keylog(args.src, args.out, bin_seconds=args.bin, keymap=args.keymap,
                                         turn_threshold=args.turn_threshold,
                                         idle=None if args.idle.lower() == "none" else args.idle, domain=args.domain,
                                         gt_out=args.gt_out)
    else:
        from slowfast_vgen.datamodules.shards.latent_cache import cache_latents

        path = cache_latents(args.shards, args.cache, make_autoencoder(args.autoencoder), args.resolution, args.dtype)
        out = {"cache": str(path)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
