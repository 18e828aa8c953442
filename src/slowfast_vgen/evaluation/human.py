"""Human evaluation export (paper App. C.3): videos laid out with a rating sheet.

Raters score each video from 0 to 1 on video quality, coherence and adherence to actions; every video
is rated by at least ``raters`` people. Videos are renamed to anonymous ids in a shuffled order (the key
that maps ids back to files is written separately, for the organiser only).
"""

from __future__ import annotations

import csv
import html
import json
import random
import shutil
from pathlib import Path

from slowfast_vgen.errors import ArgumentParser, UserInputError
from slowfast_vgen.io import atomic_path

CRITERIA = {
    "quality": "overall visual quality: resolution, clarity, aesthetic appeal",
    "coherence": "logical flow; events progress without abrupt changes or disconnections",
    "action_adherence": "how accurately the video reflects the given action prompts",
}


def export_sheet(videos: Path, out: Path, raters: int = 3, seed: int = 0) -> Path:
    files = sorted(p for p in videos.rglob("*") if p.suffix in (".mp4", ".gif"))
    stems = sorted({p.with_suffix("") for p in files})
    if not stems:
        raise UserInputError(f"{videos}: no .mp4 or .gif videos found")
    order = list(stems)
    random.Random(seed).shuffle(order)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    key, items = {}, []
    for i, stem in enumerate(order):
        vid = f"v{i:04d}"
        key[vid] = str(stem.relative_to(videos))
        for ext in (".mp4", ".gif"):
            if stem.with_suffix(ext).is_file():
                shutil.copyfile(stem.with_suffix(ext), out / "videos" / f"{vid}{ext}")
        items.append(vid)
    with atomic_path(out / "rating_sheet.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "rater", *CRITERIA, "comment"])
        for vid in items:
            for r in range(1, raters + 1):
                w.writerow([vid, f"rater{r}", "", "", "", ""])
    with atomic_path(out / "key.json") as tmp:
        tmp.write_text(json.dumps(key, indent=2))
    rows = "".join(
        f'<div><h3>{v}</h3><img src="videos/{v}.gif" style="image-rendering:pixelated;width:320px"> '
        f'<a href="videos/{v}.mp4">mp4</a></div>' for v in items
    )
    crit = "".join(f"<li><b>{k}</b> (0 to 1): {html.escape(t)}</li>" for k, t in CRITERIA.items())
    page = (f"<!doctype html><meta charset='utf-8'><title>Rating sheet</title><h1>Rate each video</h1>"
            f"<p>Fill rating_sheet.csv with scores from 0 to 1:</p><ul>{crit}</ul>{rows}")
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(page)
    return out / "index.html"


def summarize_sheet(sheet: Path, key: Path) -> dict[str, dict[str, float]]:
    """Mean score per original video folder (e.g. per method) and criterion, from a filled sheet."""
    mapping = json.loads(key.read_text())
    sums: dict[str, dict[str, list[float]]] = {}
    with open(sheet, newline="") as f:
        for row in csv.DictReader(f):
            group = str(Path(mapping[row["video"]]).parent)
            for c in CRITERIA:
                if row[c].strip():
                    value = float(row[c])
                    if not 0 <= value <= 1:
                        raise UserInputError(f"{sheet}: {row['video']} {c} = {value}; expected a score in [0, 1]")
                    sums.setdefault(group, {}).setdefault(c, []).append(value)
    return {g: {c: sum(v) / len(v) for c, v in cs.items()} for g, cs in sums.items()}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="sfvgen evaluate human-sheet", description=__doc__.split("\n\n")[0])
    p.add_argument("videos", type=Path)
    p.add_argument("--out", type=Path, default=Path("outputs/human_eval"))
    p.add_argument("--raters", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--summarize", action="store_true", help="read a filled rating_sheet.csv in --out instead")
    args = p.parse_args(argv)
    if args.summarize:
        print(json.dumps(summarize_sheet(args.out / "rating_sheet.csv", args.out / "key.json"), indent=2))
        return 0
    print(export_sheet(args.videos, args.out, args.raters, args.seed).resolve())
    return 0
