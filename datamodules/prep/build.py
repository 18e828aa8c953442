"""``sfvgen data build``: a folder of videos + an action file (JSONL or CSV) -> a shard set.

Action file rows (one per action interval; JSONL objects or CSV with a header)::

    video   path of the video relative to the folder, or its file stem ("P01_01")
    start   start time in seconds         (or start_frame, in frames of the source video)
    end     end time in seconds           (or end_frame, exclusive)
    action  free text ("go left", "open the fridge")
    domain  optional, overrides --domain for this video
    first_frame_only   optional bool (f_p = 1 for this video, paper Sec. 3.1.2 "Robot")

One video is one episode. Actions that start after the end of the video are dropped and counted; those that
run past it are clipped. Videos without action rows are skipped and counted.

Ground truth (``--gt FILE``, JSONL, optional): one row per frame of a video, ``{"video": ..., "frame": N, x: ...,
y: ..., ..., "revisit_of": M}``. ``frame`` counts the source video's frames from 0; every other key except
``revisit_of`` is a pose field (numbers; the same fields for all frames of a video, in the order of its first
row, e.g. ``x, y, z, angle``); ``revisit_of`` (optional) names an earlier frame that shows the same place
exactly. They go into each sample's ``gt`` (``pose_names``, ``pose``, ``revisits``; docs/data-format.md), which
the revisit benchmark reads (:mod:`slowfast_vgen.datamodules.recorded` derives revisits from the poses). A
video with ground truth must have a row for every frame, or it is skipped and named in the summary.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from slowfast_vgen.datamodules.shards.format import safe_name
from slowfast_vgen.datamodules.shards.write import FIRST_FRAME_ONLY_DOMAINS, ShardSetWriter, StopWriting
from slowfast_vgen.datamodules.shards.videoio import VIDEO_EXTENSIONS, iter_video_file, parse_size
from slowfast_vgen.errors import UserInputError

TRUE = {"1", "true", "yes", "y", "t"}


def _number(value: Any, what: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{where}: {what} must be a number, got {value!r}") from None
    if out != out or out < 0:
        raise UserInputError(f"{where}: {what} must be >= 0, got {value!r}")
    return out


def read_action_file(path: str | Path) -> list[dict[str, Any]]:
    """Parse a JSONL or CSV action file into rows ``{video, start, end, unit, action, domain?, first_frame_only?}``.

    ``unit`` is ``"s"`` (seconds) or ``"frame"`` (source-video frames).
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"action file {path} not found")
    raw: list[tuple[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise UserInputError(f"action file {path}:{line}: not UTF-8 text (byte {err.start}: "
                             f"{path.read_bytes()[err.start:err.start + 1]!r}); save it as UTF-8") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise UserInputError(f"{path}:{n}: not valid JSON ({err.msg})") from None
    elif path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        raw = [(f"{path}:{n}", row) for n, row in enumerate(reader, 2)]
    else:
        raise UserInputError(f"action file {path}: expected a .jsonl or .csv file")
    rows = []
    for where, obj in raw:
        if not isinstance(obj, dict):
            raise UserInputError(f"{where}: expected an object with video, start, end, action")
        for name in ("video", "action"):
            if not str(obj.get(name) or "").strip():
                raise UserInputError(f"{where}: missing {name!r} (columns: video, start, end, action)")
        if obj.get("start") not in (None, "") and obj.get("end") not in (None, ""):
            start, end, unit = _number(obj["start"], "start", where), _number(obj["end"], "end", where), "s"
        elif obj.get("start_frame") not in (None, "") and obj.get("end_frame") not in (None, ""):
            start = _number(obj["start_frame"], "start_frame", where)
            end, unit = _number(obj["end_frame"], "end_frame", where), "frame"
        else:
            raise UserInputError(f"{where}: needs start and end (seconds) or start_frame and end_frame")
        if end <= start:
            raise UserInputError(f"{where}: end ({end}) must be greater than start ({start})")
        row = {"video": str(obj["video"]).strip(), "start": start, "end": end, "unit": unit,
               "action": " ".join(str(obj["action"]).split()), "where": where}
        if str(obj.get("domain") or "").strip():
            row["domain"] = str(obj["domain"]).strip()
        if obj.get("first_frame_only") not in (None, ""):
            row["first_frame_only"] = str(obj["first_frame_only"]).strip().lower() in TRUE
        rows.append(row)
    return rows


GT_RESERVED = ("video", "frame", "revisit_of")


def read_gt_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Parse a ground-truth JSONL file: video -> ``{"pose_names", "pose": {frame: [...]}, "revisits": {frame: of}}``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"ground-truth file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"ground-truth file {path}: not UTF-8 text (byte {err.start})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{n}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserInputError(f"{path}:{n}: not valid JSON ({err.msg})") from None
    return parse_gt_rows(rows)


def parse_gt_rows(rows) -> dict[str, dict[str, Any]]:
    """Ground-truth rows ``(where, object)`` -> video -> ``{"pose_names", "pose", "revisits"}``; a bad row is a
    one-line error naming ``where`` (file and row) and the field."""
    out: dict[str, dict[str, Any]] = {}
    for where, obj in rows:
        if not isinstance(obj, dict) or not str(obj.get("video") or "").strip() or obj.get("frame") in (None, ""):
            raise UserInputError(f"{where}: expected an object with video, frame and pose fields, "
                                 f"got {json.dumps(obj)[:80]!r}")
        frame = int(_number(obj["frame"], "frame", where))
        names = [k for k in obj if k not in GT_RESERVED]
        entry = out.setdefault(str(obj["video"]).strip(), {"pose_names": names, "pose": {}, "revisits": {}})
        if names != entry["pose_names"]:
            raise UserInputError(f"{where}: pose fields {names}; earlier rows of this video have {entry['pose_names']}")
        pose = []
        for k in names:
            value = obj[k]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise UserInputError(f"{where}: pose field {k!r} must be a number, got {value!r}")
            pose.append(float(value))
        if frame in entry["pose"]:
            raise UserInputError(f"{where}: frame {frame} of {obj['video']!r} appears twice")
        entry["pose"][frame] = pose
        if obj.get("revisit_of") is not None:
            of = int(_number(obj["revisit_of"], "revisit_of", where))
            if of >= frame:
                raise UserInputError(f"{where}: revisit_of ({of}) must be an earlier frame than {frame}")
            entry["revisits"][frame] = of
    return out


def check_gt(entry: dict[str, Any], video: str) -> None:
    """Rows for frames 0 .. N-1 without a gap (checked before anything of the video is written)."""
    frames = sorted(entry["pose"])
    gap = next((i for i, f in enumerate(frames) if f != i), None)
    if gap is not None:
        raise UserInputError(f"ground truth of {video!r} has no row for frame {gap} (one row per frame from 0)")
    late = [f for f, of in entry["revisits"].items() if f >= len(frames)]
    if late:
        raise UserInputError(f"ground truth of {video!r}: revisit at frame {late[0]} beyond its {len(frames)} rows")


def _gt_frames(frames, entry: dict[str, Any], flag: dict[str, int]):
    """The video's frames, stopped at the last frame with ground truth (``flag["extra"]`` set if there were more)."""
    n = len(entry["pose"])
    for i, frame in enumerate(frames):
        if i == n:
            flag["extra"] = 1
            return
        yield frame


def _gt_segments(entry: dict[str, Any]):
    """The writer's ``gt(start, stop)`` for one video's ground truth."""

    def gt(start: int, stop: int) -> dict[str, Any]:
        revisits = [{"frame": f, "of_frame": of, "exact": True} for f, of in sorted(entry["revisits"].items())
                    if start <= f < stop]
        return {"pose_names": entry["pose_names"], "pose": [entry["pose"][f] for f in range(start, stop)],
                "revisits": revisits}

    return gt


def find_videos(folder: str | Path) -> dict[str, Path]:
    """Videos under ``folder`` by relative path and by unique file stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"video folder {folder} does not exist")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    out: dict[str, Path] = {p.relative_to(folder).as_posix(): p for p in found}
    stems = defaultdict(list)
    for p in found:
        stems[p.stem].append(p)
    out.update({stem: ps[0] for stem, ps in stems.items() if len(ps) == 1 and stem not in out})
    return out


def build_shards(
    videos: str | Path,
    actions: str | Path,
    out: str | Path,
    video: str = "mp4",
    crf: int = 18,
    gop: int = 16,
    pix_fmt: str = "yuv420p",
    fps: float | None = None,
    size: Any = None,
    segment_frames: int = 256,
    overlap: int = 16,
    shard_bytes: int = 256 << 20,
    domain: str = "generic",
    first_frame_only: bool | None = None,
    limit_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    gt: str | Path | None = None,
    reverse_actions: str | Path | dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build (or resume building) a shard set; returns a summary (also printed by the CLI). ``reverse_actions``:
    a JSON file (or a dict) of each action's reverse text, kept in the manifest for Temp-LoRA's rehearsal."""
    from tqdm import tqdm

    size = parse_size(size)
    if reverse_actions is not None and not isinstance(reverse_actions, dict):
        from slowfast_vgen.temp_lora.settings import read_reverse_actions

        reverse_actions = read_reverse_actions(reverse_actions)
    rows = read_action_file(actions)
    truth = read_gt_file(gt) if gt is not None else {}
    if truth and fps is not None:
        raise UserInputError("--gt counts the source video's frames: it cannot be combined with --fps resampling")
    files = find_videos(videos)
    by_video: dict[Path, list[dict[str, Any]]] = defaultdict(list)
    missing = []
    for row in rows:
        path = files.get(row["video"]) or files.get(Path(row["video"]).stem)
        if path is None:
            missing.append(row["video"])
        else:
            by_video[path].append(row)
    if not by_video:
        first = rows[0]["video"] if rows else None
        raise UserInputError(f"none of the {len(rows)} action rows of {actions} names a video found in {videos} "
                             f"(first: {first!r}; videos found: {len(set(files.values()))})")
    options = {"fps": fps, "shard_bytes": shard_bytes, "domain": domain, "first_frame_only": first_frame_only,
               "gt": None if gt is None else Path(gt).name}
    writer = ShardSetWriter(out, "video", options, video=video, crf=crf, gop=gop, segment_frames=segment_frames,
                            overlap=overlap, shard_bytes=shard_bytes, limit_shards=limit_shards, size=size,
                            overwrite=overwrite, pix_fmt=pix_fmt, reverse_actions=reverse_actions)
    summary: dict[str, Any] = {"out": str(out), "videos": len(by_video), "skipped_videos": {},
                               "unlabelled_videos": len(set(files.values()) - set(by_video)),
                               "actions_for_missing_videos": len(missing),
                               "missing_videos": sorted(set(missing))[:20], "dropped_actions": 0,
                               "clipped_actions": 0, "gt_notes": {}, "resumed_samples": writer.resumed_samples, "stopped": False}
    if writer.already_complete:
        summary.update(complete=True, note="already complete; nothing to do (use --overwrite to rebuild)")
        summary.update({k: writer.manifest[k] for k in ("num_shards", "num_samples", "num_episodes", "num_frames")})
        return summary
    folder = Path(videos)
    names = {path: safe_name(path.relative_to(folder).with_suffix("").as_posix().replace("/", "_"))
             for path in by_video}
    seen: dict[str, Path] = {}
    bar = tqdm(sorted(by_video), unit="video", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for path in bar:
            episode = names[path]
            if episode in seen:
                raise UserInputError(f"videos {seen[episode]} and {path} map to the same episode id {episode!r}")
            seen[episode] = path
            if writer.episode_done(episode):
                continue
            vrows = by_video[path]
            dom = next((r["domain"] for r in vrows if "domain" in r), domain)
            ffo = next((r["first_frame_only"] for r in vrows if "first_frame_only" in r), first_frame_only)
            ffo = dom in FIRST_FRAME_ONLY_DOMAINS if ffo is None else ffo
            try:
                out_fps, frames = iter_video_file(path, fps)
                src_fps = _source_fps(path) if any(r["unit"] == "frame" for r in vrows) else out_fps
                spans = []
                for r in vrows:
                    scale = out_fps if r["unit"] == "s" else out_fps / src_fps
                    a = math.floor(r["start"] * scale + 0.5)  # nearest frame, halves up
                    spans.append((a, max(a + 1, math.floor(r["end"] * scale + 0.5)), r["action"]))
                rel = path.relative_to(folder).as_posix()
                entry = truth.get(rel) or truth.get(path.stem) or truth.get(vrows[0]["video"])
                flag = {"extra": 0}
                if entry:
                    check_gt(entry, rel)
                    frames = _gt_frames(frames, entry, flag)
                counts = writer.write_episode(episode, frames, out_fps, sorted(spans), dom, ffo,
                                              _gt_segments(entry) if entry else None, source={"video": rel})
                if entry and counts["frames"] < len(entry["pose"]):  # written, each frame with its row
                    summary["gt_notes"][rel] = (f"{len(entry['pose'])} ground-truth rows, {counts['frames']} frames: "
                                                f"the rows after the last frame are not used")
                if flag["extra"]:
                    summary["gt_notes"][rel] = (f"the video goes on after the last of its {len(entry['pose'])} "
                                                f"ground-truth rows: the episode stops there")
            except UserInputError as err:
                summary["skipped_videos"][path.relative_to(folder).as_posix()] = str(err)
                continue
            summary["dropped_actions"] += counts["dropped_actions"]
            summary["clipped_actions"] += counts["clipped_actions"]
            bar.set_postfix(shards=len(writer.manifest["shards"]),
                            samples=writer.resumed_samples + writer.samples_this_run)
        manifest = writer.finish({"summary": {k: v for k, v in summary.items() if k != "out"}})
    except StopWriting:
        writer.abort()
        summary["stopped"] = True
        manifest = writer.manifest
    except BaseException:
        writer.abort()  # e.g. Ctrl-C: closed shards stay listed; rerun the same command to resume
        raise
    finally:
        bar.close()
    summary.update(complete=bool(manifest["complete"]), shards_written=writer.shards_this_run,
                   **{k: manifest[k] for k in ("num_shards", "num_samples", "num_episodes", "num_frames")})
    return summary


def _source_fps(path: Path) -> float:
    from slowfast_vgen.datamodules.shards.videoio import probe_video

    return probe_video(path)[0] or 30.0
