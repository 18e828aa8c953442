"""Converters from common recording layouts to the action file of ``sfvgen data build`` (JSONL rows
``{"video", "start", "end", "action", "domain"}``, times in seconds). Build the shards afterwards with
``sfvgen data build VIDEOS ACTIONS.jsonl OUT``.

* ``generic``: each video ``X.mp4`` has a sidecar ``X.actions.{jsonl,csv,txt}`` (or ``X.{jsonl,csv,txt}``) with
  rows ``start, end, action``; ``end`` may be omitted (the action lasts until the next one, or the video end).
  Times are seconds or ``[HH:]MM:SS.fff``; ``.txt`` lines read ``START [END] TEXT``.
* ``epic``: an EPIC-KITCHENS-style narration CSV (``video_id, start_timestamp, stop_timestamp, narration``),
  videos found anywhere under a folder as ``<video_id>.MP4``.
* ``keylog``: each video ``X.mp4`` has ``X.keylog.{jsonl,csv}`` with keyboard/mouse events
  (``t, type, key, dx, dy``); held keys and mouse motion in each time bin become text actions such as
  "go forward", "go left", "turn right", "go forward and turn left" (paper Sec. 3.1.2, Unreal/Minecraft).

Ground truth (``generic`` and ``keylog``, ``--gt-out FILE``): a video ``X.mp4`` may also have
``X.poses.{jsonl,csv,tsv}`` with one row per frame, ``frame`` plus numeric pose fields (e.g. ``x, y, angle``) and an optional ``revisit_of``
(an earlier frame showing the same place). They are gathered into one ground-truth file in the format of
``sfvgen data build --gt`` (each row gets its video's path) and checked as ``build`` checks it: numbers only, the
same fields in every row of a video, one row per frame from 0 without a gap.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from slowfast_vgen.datamodules.prep.build import check_gt, find_videos, parse_gt_rows
from slowfast_vgen.datamodules.shards.videoio import probe_video
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.io import atomic_path

TIME_RE = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")

# Keyboard/mouse -> text. Movement keys ("go ...") first, then the other keys in this order, then mouse turning and
# looking, joined by " and ": "go forward and jump and turn left".
DEFAULT_KEYMAP = {
    "w": "go forward", "up": "go forward", "s": "go backward", "down": "go backward",
    "a": "go left", "left": "go left", "d": "go right", "right": "go right",
    "space": "jump", "shift": "sprint", "ctrl": "crouch", "control": "crouch", "e": "use",
    "mouse_left": "attack", "mouse_right": "use item", "q": "drop item",
}
DOWN, UP = {"keydown", "key_down", "press", "down", "mousedown"}, {"keyup", "key_up", "release", "up", "mouseup"}
MOVE = {"mouse", "mousemove", "mouse_move", "move"}


def parse_time(value: Any, where: str) -> float:
    """Seconds from ``12.5``, ``"00:01:02.250"`` or ``"1:02.25"``."""
    text = str(value).strip()
    m = TIME_RE.match(text)
    try:
        out = float(int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))) if m else float(text)
    except ValueError:
        raise UserInputError(f"{where}: time {value!r} is neither seconds nor [HH:]MM:SS.fff") from None
    if out < 0 or out != out:
        raise UserInputError(f"{where}: time {value!r} must be >= 0")
    return out


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row dict) from a JSONL, CSV/TSV or whitespace TXT file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise UserInputError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        return out
    if suffix in (".csv", ".tsv"):
        with open(path, newline="") as f:
            return [(f"{path}:{n}", row) for n, row in enumerate(
                csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), 2)]
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        has_end = len(parts) > 2 and (TIME_RE.match(parts[1]) or _is_number(parts[1]))
        row = {"start": parts[0], "end": parts[1] if has_end else None,
               "action": " ".join(parts[2:] if has_end else parts[1:])}
        out.append((f"{path}:{n}", row))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _sidecar(video: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for ext in (".jsonl", ".csv", ".tsv", ".txt"):
            path = video.with_name(video.stem + name + ext)
            if path.is_file():
                return path
    return None


def write_action_file(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """JSONL rows, written whole or not at all (a temporary sibling renamed at the end)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def collect_gt(src: Path, videos: list[Path], gt_out: str | Path) -> dict[str, Any]:
    """The ``X.poses.*`` sidecars of ``videos`` -> one ``data build --gt`` file at ``gt_out`` (see the module doc).

    Every sidecar is parsed and checked by build's own rules before the file is written; a bad row is one error
    naming the sidecar, its row and the field. Returns ``{"gt": path, "gt_videos": n, "no_gt": [names]}``.
    """
    rows, missing = [], []
    for video in videos:
        side = _sidecar(video, (".poses",))
        if side is None or side.suffix.lower() == ".txt":
            missing.append(video.name)
            continue
        for where, row in _rows(side):
            if not isinstance(row, dict):
                raise UserInputError(f"{where}: expected an object with frame and pose fields, got {row!r}")
            # CSV cells are text: numbers become numbers, an empty revisit_of means none; anything else is left
            # for the checks below to name
            obj = {k: float(v) if isinstance(v, str) and _is_number(v.strip()) else v for k, v in row.items()
                   if k != "video" and not (k == "revisit_of" and v in (None, ""))}
            for k in ("frame", "revisit_of"):  # frame indices stay integers in the file
                if isinstance(obj.get(k), float) and obj[k].is_integer():
                    obj[k] = int(obj[k])
            rows.append((where, {"video": video.relative_to(src).as_posix(), **obj}))
    if not rows:
        raise UserInputError(f"--gt-out: no video under {src} has a pose sidecar (X.mp4 + X.poses.jsonl/csv)")
    truth = parse_gt_rows(rows)
    for video, entry in truth.items():
        check_gt(entry, video)
    with atomic_path(gt_out) as tmp:
        tmp.write_text("".join(json.dumps(obj) + "\n" for _, obj in rows))
    return {"gt": str(gt_out), "gt_videos": len(truth), "no_gt": missing}


def convert_generic(src: str | Path, out: str | Path, domain: str = "generic",
                    gt_out: str | Path | None = None) -> dict[str, Any]:
    """Videos with timestamped-action sidecars -> action file (their pose sidecars -> ``gt_out``). Returns counts."""
    src = Path(src)
    videos = sorted(set(find_videos(src).values()))
    rows, unlabelled = [], []
    for video in videos:
        side = _sidecar(video, (".actions", ""))
        if side is None:
            unlabelled.append(video.name)
            continue
        entries = []
        for where, row in _rows(side):
            if not isinstance(row, dict) or not str(row.get("action") or "").strip() or row.get("start") in (None, ""):
                raise UserInputError(f"{where}: expected start, [end,] action")
            end = parse_time(row["end"], where) if row.get("end") not in (None, "") else None
            entries.append((parse_time(row["start"], where), end, " ".join(str(row["action"]).split()), where))
        entries.sort(key=lambda e: e[0])
        duration = None
        for k, (start, end, text, where) in enumerate(entries):
            if end is None:  # lasts until the next action or the end of the video
                if k + 1 < len(entries):
                    end = entries[k + 1][0]
                else:
                    duration = duration if duration is not None else probe_video(video)[1]
                    end = duration
            if end <= start:
                raise UserInputError(f"{where}: end ({end}) must be greater than start ({start})")
            rows.append({"video": video.relative_to(src).as_posix(), "start": start, "end": end, "action": text,
                         "domain": domain})
    if not rows:
        raise UserInputError(f"no video under {src} has an action sidecar (X.mp4 + X.actions.jsonl/csv/txt)")
    gt = collect_gt(src, videos, gt_out) if gt_out is not None else {}
    write_action_file(rows, out)
    return {"out": str(out), "videos": len(videos) - len(unlabelled), "rows": len(rows), "unlabelled": unlabelled, **gt}


def convert_epic(csv_path: str | Path, videos: str | Path, out: str | Path, domain: str = "human") -> dict[str, Any]:
    """EPIC-KITCHENS-style narrations -> action file (narrations may overlap; rows for absent videos skipped)."""
    csv_path, videos = Path(csv_path), Path(videos)
    if not csv_path.is_file():
        raise UserInputError(f"narration file {csv_path} not found")
    files = find_videos(videos)
    rows, missing = [], set()
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"video_id", "start_timestamp", "stop_timestamp", "narration"}
        if not need <= set(reader.fieldnames or []):
            raise UserInputError(f"{csv_path}: needs columns {sorted(need)}, found {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            where = f"{csv_path}:{n}"
            video = files.get(row["video_id"])
            if video is None:
                missing.add(row["video_id"])
                continue
            start, end = parse_time(row["start_timestamp"], where), parse_time(row["stop_timestamp"], where)
            if end <= start:
                raise UserInputError(f"{where}: stop_timestamp ({end}) must be after start_timestamp ({start})")
            rows.append({"video": video.relative_to(videos).as_posix(), "start": start, "end": end,
                         "action": " ".join(row["narration"].split()), "domain": domain})
    if not rows:
        raise UserInputError(f"no narration of {csv_path} matches a video under {videos} "
                             f"(looked for e.g. {sorted(missing)[:3]})")
    write_action_file(rows, out)
    return {"out": str(out), "rows": len(rows), "videos": len({r["video"] for r in rows}),
            "missing_videos": sorted(missing)}


def keylog_to_actions(events: list[tuple[str, dict[str, Any]]], duration: float, bin_seconds: float = 0.25,
                      keymap: dict[str, str] | None = None, turn_threshold: float = 40.0,
                      idle: str | None = "stay") -> list[tuple[float, float, str]]:
    """Keyboard/mouse events -> ``(start, end, text)`` spans over ``[0, duration)``.

    A key counts in a bin if it is held at any time in it. Mouse motion summed over a bin turns the camera when
    it exceeds ``turn_threshold`` pixels per second ("turn left"/"turn right", "look up"/"look down").
    Consecutive bins with the same text are merged; bins with no input get ``idle`` (or no action if None).
    """
    if bin_seconds <= 0:
        raise UserInputError(f"bin must be > 0 seconds, got {bin_seconds}")
    keymap = {k.lower(): v for k, v in (keymap or DEFAULT_KEYMAP).items()}
    order = {v: i for i, v in enumerate(dict.fromkeys(keymap.values()))}
    nbins = max(1, int(-(-duration // bin_seconds)))
    active: list[set[str]] = [set() for _ in range(nbins)]
    dx, dy = [0.0] * nbins, [0.0] * nbins
    held: dict[str, float] = {}
    parsed = []
    for where, ev in events:
        if not isinstance(ev, dict) or "t" not in ev or "type" not in ev:
            raise UserInputError(f"{where}: expected an event with t and type")
        kind = str(ev["type"]).strip().lower()
        key = str(ev.get("key") or ev.get("button") or "").strip().lower()
        if kind in ("mousedown", "mouseup") and not key.startswith("mouse_"):
            key = f"mouse_{key or 'left'}"
        if kind not in DOWN | UP | MOVE:
            raise UserInputError(f"{where}: unknown event type {ev['type']!r} (expected keydown, keyup, mouse, "
                                 "mousedown, mouseup)")
        parsed.append((parse_time(ev["t"], where), kind, key, ev, where))
    parsed.sort(key=lambda p: p[0])

    def mark(key: str, t0: float, t1: float) -> None:
        if key not in keymap:
            return
        last = int(max(t0, t1 - 1e-9) // bin_seconds)  # a key released on a bin boundary is not in the next bin
        for b in range(int(t0 // bin_seconds), min(nbins, last + 1)):
            active[b].add(keymap[key])

    for t, kind, key, ev, where in parsed:
        if kind in MOVE:
            try:
                b = min(nbins - 1, int(t // bin_seconds))
                dx[b] += float(ev.get("dx") or 0)
                dy[b] += float(ev.get("dy") or 0)
            except (TypeError, ValueError):
                raise UserInputError(f"{where}: dx/dy must be numbers") from None
        elif kind in DOWN:
            held.setdefault(key, t)
        elif key in held:
            mark(key, held.pop(key), t)
    for key, t0 in held.items():
        mark(key, t0, duration)
    texts = []
    for b in range(nbins):
        parts = sorted(active[b], key=lambda v: order.get(v, len(order)))
        moves = [p for p in parts if p.startswith("go ")]
        rest = [p for p in parts if not p.startswith("go ")]
        thr = turn_threshold * bin_seconds
        turn = ["turn left"] if dx[b] < -thr else ["turn right"] if dx[b] > thr else []
        look = ["look up"] if dy[b] < -thr else ["look down"] if dy[b] > thr else []
        text = " and ".join(moves + rest + turn + look) or idle
        texts.append(text)
    spans: list[tuple[float, float, str]] = []
    for b, text in enumerate(texts):
        t0, t1 = b * bin_seconds, min(duration, (b + 1) * bin_seconds)
        if text is None or t1 <= t0:
            continue
        if spans and spans[-1][2] == text and abs(spans[-1][1] - t0) < 1e-9:
            spans[-1] = (spans[-1][0], t1, text)
        else:
            spans.append((t0, t1, text))
    return spans


def convert_keylog(src: str | Path, out: str | Path, bin_seconds: float = 0.25, keymap: str | Path | None = None,
                   turn_threshold: float = 40.0, idle: str | None = "stay", domain: str = "game",
                   gt_out: str | Path | None = None) -> dict[str, Any]:
    """Videos with keyboard/mouse log sidecars (``X.keylog.jsonl/csv``) -> action file (pose sidecars -> ``gt_out``)."""
    src = Path(src)
    mapping = None
    if keymap is not None:
        try:
            mapping = json.loads(Path(keymap).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserInputError(f"keymap {keymap}: cannot read a JSON object ({err})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise UserInputError(f"keymap {keymap}: expected a JSON object {{key: action text}}")
    videos = sorted(set(find_videos(src).values()))
    rows, unlabelled = [], []
    for video in videos:
        side = _sidecar(video, (".keylog",))
        if side is None:
            unlabelled.append(video.name)
            continue
        duration = probe_video(video)[1]
        for start, end, text in keylog_to_actions(_rows(side), duration, bin_seconds, mapping, turn_threshold, idle):
            rows.append({"video": video.relative_to(src).as_posix(), "start": round(start, 6), "end": round(end, 6),
                         "action": text, "domain": domain})
    if not rows:
        raise UserInputError(f"no video under {src} has a keyboard/mouse log (X.mp4 + X.keylog.jsonl/csv)")
    gt = collect_gt(src, videos, gt_out) if gt_out is not None else {}
    write_action_file(rows, out)
    return {"out": str(out), "videos": len(videos) - len(unlabelled), "rows": len(rows), "unlabelled": unlabelled, **gt}
