"""The shard format: tar files of episode segments plus a JSON manifest (see docs/data-format.md).

A shard set is a directory::

    manifest.json          counts, options, per-shard sha256, per-sample member offsets and crc32
    shard-000000.tar       members <key>.json, <key>.mp4 | <key>.frames.npy, [<key>.latents.npy]
    shard-000001.tar
    ...

Tars are plain POSIX (webdataset-compatible: members grouped by key). Shards are written under a temporary
name (``.tar.tmp``) and renamed once complete; the manifest is replaced atomically after every shard, so an
interrupted writer leaves a valid, resumable partial set (``"complete": false``).

Shards are written by webdataset's ``TarWriter`` (deterministic headers: the same samples give the same bytes).
Readers find a sample by the byte offsets in the manifest and check its crc32 (random access, which the
webdataset library has only through ``wids`` and its own index and download cache; this format's index is the
manifest); when the bytes at the
recorded offsets do not match (a member was removed, the tar was rewritten) they rescan the tar's headers
before declaring the sample bad. Nothing here unpickles: metadata is JSON, arrays are ``.npy``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds

from slowfast_vgen.errors import UserInputError

FORMAT, VERSION = "sfvgen-shards", 1
MANIFEST = "manifest.json"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")  # no dots: webdataset splits member names at the first dot
REQUIRED_META = ("key", "episode", "segment", "start_frame", "overlap", "frames", "height", "width", "fps", "domain",
                 "actions", "video")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short phrase reported at the end of the epoch."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise UserInputError(f"sample key {key!r} is invalid; expected 1-80 characters from [A-Za-z0-9_-]")
    return key


def safe_name(name: str) -> str:
    """A string usable in a sample key (other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:60] or "_"


def meta_problem(meta: Any) -> str | None:
    """Why a sample's metadata is unusable, or None. Checks required keys and that actions lie inside the video."""
    if not isinstance(meta, dict):
        return "metadata is not a JSON object"
    for name in REQUIRED_META:
        if name not in meta:
            return f"missing key {name!r}"
    frames, overlap = meta["frames"], meta["overlap"]
    if not isinstance(frames, int) or frames < 1 or not isinstance(overlap, int) or not 0 <= overlap < frames:
        return f"bad frames/overlap ({frames!r}, {overlap!r})"
    if not isinstance(meta["actions"], list):
        return "actions is not a list"
    for span in meta["actions"]:
        if not (isinstance(span, list) and len(span) == 3 and all(isinstance(v, int) for v in span[:2])
                and isinstance(span[2], str)):
            return f"bad action entry {span!r} (expected [start_frame, end_frame, text])"
        if not 0 <= span[0] < span[1] <= frames:
            return f"action {span!r} outside the video's frame range [0, {frames}]"
    return None


def sample_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps per sample, enough to enumerate training clips without opening the tars."""
    return {
        "key": meta["key"], "episode": meta["episode"], "segment": meta["segment"],
        "start_frame": meta["start_frame"], "overlap": meta["overlap"], "frames": meta["frames"],
        "domain": meta["domain"], "first_frame_only": bool(meta.get("first_frame_only", False)),
        "spans": [[a, b] for a, b, _ in meta["actions"]],
    }


def sample_crc(members: dict[str, bytes]) -> int:
    crc = 0
    for ext in sorted(members):
        crc = zlib.crc32(members[ext], crc)
    return crc


# ---------------------------------------------------------------------------------------------- manifest


def new_manifest(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "kind": kind, "complete": False, "options": options,
            "num_shards": 0, "num_samples": 0, "num_episodes": 0, "num_frames": 0, "num_actions": 0,
            "episodes": {}, "shards": []}


def update_counts(manifest: dict[str, Any]) -> None:
    samples = [s for shard in manifest["shards"] for s in shard["samples"]]
    manifest["num_shards"] = len(manifest["shards"])
    manifest["num_samples"] = len(samples)
    manifest["num_episodes"] = len({s["episode"] for s in samples})
    manifest["num_frames"] = sum(s["frames"] - s["overlap"] for s in samples)
    manifest["num_actions"] = sum(len(s["spans"]) for s in samples)


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``root/manifest.json``."""
    update_counts(manifest)
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)


def load_manifest(root: str | Path, require_complete: bool = True) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise UserInputError(f"shard directory {root} does not exist")
    if not path.is_file():
        raise UserInputError(f"{path} not found; expected a shard set written by `sfvgen data build` or `record`")
    return parse_manifest(path.read_bytes(), str(path), str(root), require_complete)


def parse_manifest(data: bytes, where: str, root: str, require_complete: bool = True) -> dict[str, Any]:
    """A manifest's bytes (from a file or a URL) as a checked dict; ``where``/``root`` name them in errors."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserInputError(f"{where}: format is {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                             f"expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise UserInputError(f"{where}: version {manifest.get('version')!r} is not supported (expected {VERSION})")
    if require_complete and not manifest.get("complete"):
        raise UserInputError(f"shard set {root} is incomplete (its writer was stopped); run the same "
                             "`sfvgen data build`/`record` command again to resume it")
    return manifest


# ------------------------------------------------------------------------------------------------ writer


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what goes through it."""

    def __init__(self, path: Path) -> None:
        self.f, self.sha, self.size = open(path, "wb"), hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b: bytes) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)
        return len(b)

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
        super().close()


class ShardWriter:
    """Write samples into ``shard-NNNNNN.tar`` files of about ``max_bytes`` each.

    Each shard is written as ``.tar.tmp`` and renamed when complete; ``on_shard(entry)`` is then called with
    the shard's manifest entry (name, bytes, sha256, samples with offsets and crc32). Deterministic tar
    headers (mtime 0, uid 0) make identical samples give identical bytes.
    """

    def __init__(self, root: str | Path, max_bytes: int = 256 << 20, max_samples: int | None = None,
                 first_index: int = 0, on_shard: Callable[[dict[str, Any]], None] | None = None,
                 prefix: str = "shard") -> None:
        if max_bytes < 1:
            raise UserInputError(f"shard size must be >= 1 byte, got {max_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_samples, self.index = max_bytes, max_samples, first_index
        self.on_shard, self.prefix = on_shard, prefix
        self._tar: wds.TarWriter | None = None
        self._file: _HashingFile | None = None
        self._samples: list[dict[str, Any]] = []
        self._offset = 0  # bytes of the shard in progress (the tar stream is buffered: its file cannot tell)

    def _open(self) -> None:
        self.name = f"{self.prefix}-{self.index:06d}.tar"
        self._file = _HashingFile(self.root / (self.name + ".tmp"))
        # webdataset's writer, with deterministic headers: identical samples give identical bytes
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, user="", group="", mode=0o644,
                                  format=tarfile.USTAR_FORMAT)
        self._samples, self._offset = [], 0

    def write(self, key: str, members: dict[str, bytes], summary: dict[str, Any]) -> None:
        """Append one sample; ``members`` maps extensions (``json``, ``mp4``, ...) to bytes."""
        check_key(key)
        size = sum(512 + -(-len(b) // 512) * 512 for b in members.values())
        if self._tar is not None and self._samples and (
            self._offset + size > self.max_bytes
            or (self.max_samples is not None and len(self._samples) >= self.max_samples)
        ):
            self.close()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        offsets = {}
        for ext in sorted(members, key=lambda e: (e != "json", e)):  # json first, as webdataset readers like
            data = members[ext]  # one USTAR header block (names are short: check_key), then the data, padded
            offsets[ext] = [self._offset + 512, len(data)]
            self._offset += 512 + -(-len(data) // 512) * 512
            self._tar.write({"__key__": key, ext: data})  # one member at a time: TarWriter would sort them
        self._samples.append({**summary, "key": key, "members": offsets, "crc32": sample_crc(members)})

    def close(self) -> None:
        """Finish the current shard: end-of-archive blocks, fsync, rename, ``on_shard``."""
        if self._tar is None:
            return
        assert self._file is not None
        self._tar.close()
        self._file.close()
        os.replace(self.root / (self.name + ".tmp"), self.root / self.name)
        entry = {"name": self.name, "bytes": self._file.size, "sha256": self._file.sha.hexdigest(),
                 "num_samples": len(self._samples), "samples": self._samples}
        self._tar, self._file, self.index = None, None, self.index + 1
        if self.on_shard is not None:
            self.on_shard(entry)

    def abort(self) -> None:
        """Drop the shard in progress (its ``.tmp`` file is removed)."""
        if self._file is not None:
            self._file.close()
            (self.root / (self.name + ".tmp")).unlink(missing_ok=True)
        self._tar, self._file = None, None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close() if exc_type is None else self.abort()


# ------------------------------------------------------------------------------------------------ reader


def scan_tar(path: str | Path) -> tuple[dict[str, dict[str, list[int]]], bool]:
    """(``{key: {ext: [offset, size]}}`` from a tar's headers, whether the scan reached the end of the archive).

    Stops quietly at a truncated or damaged header (then the second value is False).
    """
    found: dict[str, dict[str, list[int]]] = {}
    file_size = os.path.getsize(path)
    complete = False
    try:
        with tarfile.open(path, mode="r:") as tar:
            while True:
                try:
                    info = tar.next()
                except (tarfile.TarError, OSError, EOFError):
                    break
                if info is None:
                    complete = tar.offset <= file_size
                    break
                if not info.isfile() or info.offset_data + info.size > file_size:
                    break
                base = os.path.basename(info.name)
                if "." in base:
                    key, ext = base.split(".", 1)
                    found.setdefault(key, {})[ext] = [info.offset_data, info.size]
    except (tarfile.TarError, OSError, EOFError):
        pass
    return found, complete


class ShardReader:
    """Random access to samples of one shard set (keeps a few files open per process).

    Reads are positional (``os.pread``) and files are reopened in a new process, so DataLoader workers forked
    from a process that already read never share a file offset.
    """

    def __init__(self, root: str | Path, max_open: int = 8) -> None:
        self.root, self.max_open = Path(root), max_open
        self._files: OrderedDict[str, BinaryIO] = OrderedDict()
        self._scans: dict[str, tuple[dict[str, dict[str, list[int]]], bool]] = {}
        self._pid = os.getpid()

    def _file(self, name: str) -> BinaryIO:
        if self._pid != os.getpid():  # forked: open our own files
            self._files, self._pid = OrderedDict(), os.getpid()
        if name not in self._files:
            if len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
            self._files[name] = open(self.root / name, "rb")
        self._files.move_to_end(name)
        return self._files[name]

    def _read(self, name: str, offsets: dict[str, list[int]]) -> dict[str, bytes] | None:
        fd = self._file(name).fileno()
        out = {}
        for ext, (off, size) in offsets.items():
            data = os.pread(fd, size, off)
            if len(data) != size:
                return None
            out[ext] = data
        return out

    def read(self, shard: dict[str, Any], sample: dict[str, Any]) -> dict[str, bytes]:
        """The members of ``sample`` (a manifest entry of ``shard``), checked against its crc32; else BadSample."""
        key, name = sample["key"], shard["name"]
        if not (self.root / name).is_file():
            raise BadSample(key, f"missing shard file: {name}")
        try:
            members = self._read(name, sample["members"])
            if members is not None and sample_crc(members) == sample["crc32"]:
                return members
            # Offsets do not match: the tar changed since the manifest was written. Look the members up by name.
            if name not in self._scans:
                self._scans[name] = scan_tar(self.root / name)
            found, complete = self._scans[name]
            where = found.get(key, {})
            missing = sorted(set(sample["members"]) - set(where))
            if missing:
                if not complete:
                    size, expected = os.path.getsize(self.root / name), shard.get("bytes", 0)
                    raise BadSample(key, f"truncated shard: {name} ({size} of {expected} bytes)")
                raise BadSample(key, f"missing member: {key}.{missing[0]}")
            members = self._read(name, {ext: where[ext] for ext in sample["members"]})
        except OSError as err:
            raise BadSample(key, f"unreadable shard: {name}: {err.strerror or err}") from None
        if members is None or sample_crc(members) != sample["crc32"]:
            raise BadSample(key, "checksum mismatch: corrupted data")
        return members

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:  # open files stay in the process that opened them
        return {"root": self.root, "max_open": self.max_open, "_files": OrderedDict(), "_scans": {},
                "_pid": os.getpid()}


# ------------------------------------------------------------------------------------------------ verify


def verify_shards(root: str | Path, deep: bool = False) -> dict[str, Any]:
    """Check a shard set against its manifest; returns a report ``{ok, checked, problems: [...], bad_samples}``.

    Checks each shard's presence, size and sha256; for a shard that fails, each sample's crc32 (to name the
    bad samples). ``deep`` also parses every sample's metadata and decodes its video.
    """
    from slowfast_vgen.datamodules.shards.videoio import VIDEO_MEMBERS, decode_frames, load_npy

    root = Path(root)
    manifest = load_manifest(root, require_complete=False)
    problems: list[str] = []
    bad: dict[str, str] = {}
    if not manifest.get("complete"):
        problems.append("manifest says the set is incomplete (writer stopped); rerun the writer to resume")
    listed = {s["name"] for s in manifest["shards"]}
    for path in sorted(root.glob("*.tar*")):
        if path.name not in listed:
            unfinished = " (unfinished shard)" if path.suffix == ".tmp" else ""
            problems.append(f"{path.name}: not in the manifest{unfinished}")
    reader = ShardReader(root)
    counted = 0
    for shard in manifest["shards"]:
        path = root / shard["name"]
        counted += len(shard["samples"])
        if len(shard["samples"]) != shard.get("num_samples"):
            problems.append(f"{shard['name']}: manifest lists {len(shard['samples'])} samples, "
                            f"num_samples says {shard.get('num_samples')}")
        if not path.is_file():
            problems.append(f"{shard['name']}: missing")
            bad.update({s["key"]: f"missing shard file: {shard['name']}" for s in shard["samples"]})
            continue
        size, digest = path.stat().st_size, hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        intact = size == shard["bytes"] and digest.hexdigest() == shard["sha256"]
        if not intact:
            problems.append(f"{shard['name']}: " + (f"size {size} != {shard['bytes']}" if size != shard["bytes"]
                                                    else "sha256 mismatch"))
        if intact and not deep:
            continue
        for sample in shard["samples"]:
            try:
                members = reader.read(shard, sample)
                if deep:
                    meta = json.loads(members["json"])
                    problem = meta_problem(meta)
                    if problem:
                        raise BadSample(sample["key"], f"bad metadata: {problem}")
                    video = meta["video"]["member"] if isinstance(meta["video"], dict) else None
                    if video in VIDEO_MEMBERS:
                        n = len(decode_frames(video, members[video]))
                        if n != meta["frames"]:
                            raise BadSample(sample["key"], f"bad metadata: video has {n} frames, metadata says "
                                                           f"{meta['frames']}")
                    if "latents.npy" in members:
                        load_npy(members["latents.npy"])
            except BadSample as err:
                bad[err.key] = err.reason
            except Exception as err:  # noqa: BLE001 - any decode failure makes the sample bad
                bad[sample["key"]] = f"undecodable: {type(err).__name__}: {err}"
    reader.close()
    if counted != manifest.get("num_samples"):
        problems.append(f"manifest counts {manifest.get('num_samples')} samples, its shards list {counted}")
    problems += [f"sample {k}: {r}" for k, r in sorted(bad.items())]
    return {"ok": not problems, "shards": len(manifest["shards"]), "samples": counted,
            "bad_samples": len(bad), "problems": problems}
