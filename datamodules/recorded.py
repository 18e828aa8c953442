"""Recorded episodes (a shard set with per-frame poses, e.g. ``sfvgen data record``) as revisit benchmark episodes.

The built-in world's benchmark (:class:`~slowfast_vgen.datamodules.world.WorldRevisitDataset`) knows the camera
of every pixel; a recording knows the pose of every frame. So here a revisit is a whole frame: frame ``j`` of
the generated video revisits frame ``i < j`` when their poses agree (position, the fields named x/y/z, within
``pose_tolerance``; angle, the field named angle or yaw, within ``angle_tolerance`` degrees), and it *needs
memory* when no context frame of ``j``'s chunk is at that pose (the place has left the window, paper Sec. 3.2).
Explicit revisits in the ground truth (the recorder's pairs) count the same way. Only frames that need memory
are benchmark revisits.

The tolerances are the data's own when its ground truth declares them (``gt.tolerance``, :data:`TOLERANCE_KEYS`;
Memory Maze: 0.25 cell and 15 degrees, with the "been away" rule below), else ViZDoom's (4 map units, the same
angle: its returns are exact warps); an explicit ``pose_tolerance`` / ``angle_tolerance`` overrides them.

Memory Maze (:mod:`slowfast_vgen.simulators.memory_maze`): the recorder's frame ``t`` revisits frame ``s`` only
when the agent has been away in between (a frame farther than ``away_distance`` from ``s``'s position or turned
more than ``away_angle`` from its heading). With ``away_distance`` / ``away_angle`` declared, the benchmark pairs
``j`` with the earliest ``i`` under that same rule (:func:`~slowfast_vgen.simulators.memory_maze.been_away`), so
every benchmark revisit is a recorder revisit whose first visit lies before ``j``'s chunk, and the benchmark adds
its own condition on top: the window must not show the place.

Chunks follow the recording's action spans: a span of ``n`` frames becomes chunks of at most ``chunk_frames``
frames, each generated under the span's action (``(text, n_frames)``, as
:meth:`~slowfast_vgen.generation.LongVideoGenerator.stream` takes them). Frame 0 is given (real); every later
frame is generated.

Item (the same contract as the world's revisit episodes): ``first`` (1, C, H, W), ``frames`` (T, C, H, W) real,
``actions`` ``[(text, n_frames), ...]``, ``revisits`` ``[(first_visit, [later, ...])]``, ``seed`` (the episode's
index), ``episode`` (its name), ``poses`` (T, P) and ``pose_names``, ``tolerance`` (the tolerances used) and,
when the recording declares one, ``pattern`` (the episode's revisit pattern, e.g. Memory Maze's ``loop``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from slowfast_vgen.datamodules.shards.read import ShardEpisodeDataset, episode_chunks
from slowfast_vgen.datamodules.shards.format import BadSample
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.poses import pose_distances, same_place, split_pose
from slowfast_vgen.simulators.memory_maze import been_away


def chunk_starts(n_frames: int, chunks: list[tuple[int, int, str]]) -> np.ndarray:
    """Frame -> first frame of the chunk that generates it (frame 0 and frames in no chunk: -1)."""
    start = np.full(n_frames, -1, dtype=np.int64)
    for a, b, _ in chunks:
        start[a:b] = a
    return start


# the benchmark's tolerances when the data declares none: ViZDoom's (map units; its returns warp back exactly)
DEFAULT_TOLERANCE = {"position": 4.0, "angle": 1e-3, "away_distance": None, "away_angle": None}
TOLERANCE_KEYS = tuple(DEFAULT_TOLERANCE)  # gt "tolerance": {"position", "angle", "away_distance", "away_angle"}


def pose_revisits(
    positions: np.ndarray,
    angles: np.ndarray | None,
    starts: np.ndarray,
    context_frames: int,
    pose_tolerance: float = 4.0,
    angle_tolerance: float = 1e-3,
    explicit: list[tuple[int, int]] = (),
    away_distance: float | None = None,
    away_angle: float | None = None,
) -> list[tuple[int, list[int]]]:
    """Revisit groups ``[(first_visit, [later, ...])]`` of the frames that need memory.

    ``positions`` (T, k), ``angles`` (T,) in degrees or None (see :func:`split_pose`); ``starts`` from
    :func:`chunk_starts`. Frame ``j`` (a generated frame) revisits the earliest frame ``i`` before its chunk whose
    pose matches (distance <= ``pose_tolerance``, angles within ``angle_tolerance``) and, with ``away_distance``
    or ``away_angle``, after which some frame before ``j`` was away from ``i``'s pose (Memory Maze's rule,
    :func:`~slowfast_vgen.simulators.memory_maze.been_away`); it needs memory when none of the ``context_frames``
    frames before its chunk matches it. ``explicit`` (later, first) pairs are added under the same memory rule.
    """
    if positions.ndim != 2 or len(positions) != len(starts) or (angles is not None and len(angles) != len(starts)):
        raise UserInputError(f"pose_revisits: positions must be (T, k) with T = {len(starts)} frames, got "
                             f"{tuple(positions.shape)}")
    if min(pose_tolerance, angle_tolerance, *(t for t in (away_distance, away_angle) if t is not None)) < 0:
        raise UserInputError(f"pose_revisits: tolerances must be >= 0, got {pose_tolerance}, {angle_tolerance}, "
                             f"away {away_distance} and {away_angle}")
    dist, turn = pose_distances(positions, angles)  # (T, T)
    match = same_place(dist, turn, pose_tolerance, angle_tolerance)  # (T, T), symmetric: the same place
    revisit = match.copy()  # revisit[i, j]: j may revisit i
    if away_distance is not None or away_angle is not None:  # ... only after being away (the recorder's rule)
        revisit &= been_away(dist, turn, away_distance, away_angle)
    for j, i in explicit:
        match[j, i] = match[i, j] = revisit[i, j] = True
    groups: dict[int, list[int]] = {}
    for j in range(len(positions)):
        s = int(starts[j])
        if s < 0:
            continue  # given, not generated
        context = range(max(0, s - context_frames), s)
        if any(match[j, k] for k in context):
            continue  # the context shows this place: copying, not memory
        earlier = np.flatnonzero(revisit[:s, j])
        if len(earlier):
            groups.setdefault(int(earlier[0]), []).append(j)
    return sorted(groups.items())


class RecordedRevisitDataset(Dataset):
    """Revisit benchmark episodes from a shard set with poses in its ground truth (see the module docstring).

    ``episodes``: how many (the first ones, in manifest order; default all). Episodes without any frame that
    needs memory are kept (they score NaN on the revisit scores and are left out of the paired statistics).
    ``pose_tolerance`` / ``angle_tolerance``: None takes the data's (module docstring), a number overrides it.
    """

    def __init__(
        self,
        roots: str | Path | list[str | Path],
        resolution: Any = None,
        chunk_frames: int = 4,
        context_frames: int = 4,
        episodes: int | None = None,
        pose_tolerance: float | None = None,
        angle_tolerance: float | None = None,
        first_episode: int = 0,
        require_poses: bool = True,
    ) -> None:
        if chunk_frames < 1 or context_frames < 1:
            raise UserInputError(f"chunk_frames and context_frames must be >= 1, got {chunk_frames} and {context_frames}")
        for name, value in (("pose_tolerance", pose_tolerance), ("angle_tolerance", angle_tolerance)):
            if value is not None and value < 0:
                raise UserInputError(f"{name} {value}: expected >= 0, or None for the data's own tolerance")
        self.source = ShardEpisodeDataset(roots, resolution)
        total = len(self.source)
        if not 0 <= first_episode < total or (episodes is not None and not 1 <= episodes <= total):
            raise UserInputError(f"episodes={episodes} from episode {first_episode}: the shard set holds {total} "
                                 f"episodes")
        self.num_episodes = total if episodes is None else episodes
        self.first_episode, self.require_poses = first_episode, require_poses
        self.chunk_frames, self.context_frames = chunk_frames, context_frames
        self.pose_tolerance, self.angle_tolerance = pose_tolerance, angle_tolerance
        self.seed = 0  # episodes are numbered from 0 (the world's benchmark numbers them by seed)
        # the reverse of each action, as the data declares it (manifest "reverse_actions"; none: not declared)
        self.reverse_actions = {k: v for m in self.source.sets.manifests for k, v in (m.get("reverse_actions") or {}).items()}

    def __len__(self) -> int:
        return self.num_episodes

    def tolerance(self, gt: dict[str, Any] | None) -> dict[str, float | None]:
        """The tolerances of an episode whose ground truth is ``gt``: the data's ``tolerance`` where it declares
        them, else :data:`DEFAULT_TOLERANCE`; ``pose_tolerance`` / ``angle_tolerance`` given here override both."""
        declared = (gt or {}).get("tolerance") or {}
        out = {k: declared.get(k, DEFAULT_TOLERANCE[k]) for k in TOLERANCE_KEYS}
        explicit = {"position": self.pose_tolerance, "angle": self.angle_tolerance}
        return {**out, **{k: float(v) for k, v in explicit.items() if v is not None}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_episodes:
            raise IndexError(index)
        try:  # episodes first_episode, first_episode + 1, ... (wrapping around the set)
            ep = self.source.load((self.first_episode + index) % len(self.source))
        except BadSample as err:  # a benchmark episode must not be skipped silently
            raise UserInputError(f"benchmark episode {self.source.episodes[index][0]!r} is unreadable: {err.key}: "
                                 f"{err.reason} (run `sfvgen data verify`)") from None
        poses = [p for gt in ep["gt"] for p in gt.get("pose", [])]
        video = ep["video"]
        has_poses = len(poses) == len(video)
        if not has_poses and (self.require_poses or poses):
            raise UserInputError(f"episode {ep['episode']!r}: {len(poses)} poses for {len(video)} frames; the revisit "
                                 f"benchmark needs one pose per frame in the samples' gt (docs/data-format.md)")
        chunks = episode_chunks(ep, self.chunk_frames)
        if not chunks or chunks[0][0] != 1 or any(a != b for (_, b, _), (a, _, _) in zip(chunks, chunks[1:])):
            raise UserInputError(f"episode {ep['episode']!r}: its actions must label every frame after the first "
                                 f"without gaps or overlaps, got spans {ep['actions'][:4]}...")
        gt = ep["gt"][0] if ep["gt"] else {}
        names, tolerance = gt.get("pose_names"), self.tolerance(gt)
        revisits: list[tuple[int, list[int]]] = []
        if has_poses:  # without poses (allowed for the slow-fast loop, which needs no benchmark): no revisits
            positions, angles = split_pose(np.asarray(poses, dtype=np.float64), names)
            revisits = pose_revisits(positions, angles, chunk_starts(len(video), chunks), self.context_frames,
                                     tolerance["position"], tolerance["angle"],
                                     [(j, i) for i, js in ep["revisits"] for j in js],
                                     tolerance["away_distance"], tolerance["away_angle"])
        end = chunks[-1][1]
        return {"first": video[:1], "frames": video[:end], "actions": [(t, b - a) for a, b, t in chunks],
                "revisits": [(i, [j for j in js if j < end]) for i, js in revisits], "seed": self.first_episode + index,
                "episode": ep["episode"], "pose_names": names, "domain": ep["domain"], "fps": float(ep["fps"]),
                "poses": torch.tensor(poses[:end] if has_poses else [], dtype=torch.float64),
                "tolerance": tolerance, **({"pattern": str(gt["pattern"])} if gt.get("pattern") else {})}


class ShardLoopDataModule(L.LightningDataModule):
    """Recorded episodes of a shard set for the slow-fast loop (Alg. 1b), as
    :class:`~slowfast_vgen.datamodules.world.WorldLoopDataModule` gives the built-in world's: each epoch the
    system's inner loop turns ``num_episodes`` of them into D_s (use ``Trainer(reload_dataloaders_every_n_epochs=1)``).

    ``fresh_episodes``: epoch ``e`` takes episodes ``e * num_episodes ...`` (wrapping around the set), so that
    Phi meets new episodes every epoch; otherwise the first ``num_episodes`` every epoch. Poses are not needed.
    """

    def __init__(self, shards: str | list[str], num_episodes: int | None = None, resolution: Any = None,
                 chunk_frames: int = 4, fresh_episodes: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.episodes = self.episodes_of_epoch(0)

    def episodes_of_epoch(self, epoch: int) -> RecordedRevisitDataset:
        h = self.hparams
        episodes = RecordedRevisitDataset(h.shards, h.resolution, h.chunk_frames, context_frames=1,
                                          episodes=h.num_episodes, require_poses=False)
        if h.fresh_episodes:  # wraps around the set
            episodes.first_episode = (epoch * episodes.num_episodes) % len(episodes.source)
        return episodes

    def train_dataloader(self) -> Any:
        from slowfast_vgen.datamodules.slowfast_data import slow_fast_dataloader

        epoch = self.trainer.current_epoch
        return slow_fast_dataloader(self.trainer.lightning_module, self.episodes_of_epoch(epoch), epoch)
