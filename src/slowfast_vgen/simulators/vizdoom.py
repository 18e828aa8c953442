"""ViZDoom recorder: the built-in "Game" domain and the source of the revisit benchmark.

Each episode starts at a place, leaves it under text actions ("go forward", "turn left", ...) from a scripted or
random policy, and comes back to it by the reverse actions. Doom keeps momentum, so walking back ends a few
units off: the recorder waits until the player stands still, turns to the start angle if a turn was dropped,
then warps to the exact start position (``+sv_cheats 1``, ``warp X Y``) and takes two more tics (the frame right
after a warp is stale, so it is not recorded), then stays until animated items show the same sprite as at the
start (at most 35 tics). That last frame revisits the start frame exactly: same position and angle, and the
recorder checks the pixels (``pixel_mae``, ``exact`` when pose and pixels are equal). Ground truth per frame:
pose ``(x, y, z, angle)``; per revisit: ``{frame, of_frame, warp_distance, pose_error, pixel_mae, exact}``
(episode frame indices).

Frame ``t`` is labelled with the action that produced it from frame ``t - 1`` (frame 0 has none), so a clip's
generated frames are exactly those its action caused. Gotchas handled (see docs/data-format.md): turn
commands in the first tics of an episode are ignored (8 idle tics first); angles are quantised (turns of
11.25 degrees); start positions are warped to integers so the warp back is exact.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from slowfast_vgen.errors import UserInputError

TURN_STEP = 11.25  # degrees per tic; a multiple of the engine's angle quantum
# text -> (MOVE_FORWARD, MOVE_BACKWARD, MOVE_LEFT, MOVE_RIGHT, TURN_LEFT_RIGHT_DELTA); a positive delta turns right
ACTIONS: dict[str, list[float]] = {
    "go forward": [1, 0, 0, 0, 0], "go backward": [0, 1, 0, 0, 0], "go left": [0, 0, 1, 0, 0],
    "go right": [0, 0, 0, 1, 0], "turn left": [0, 0, 0, 0, -TURN_STEP], "turn right": [0, 0, 0, 0, TURN_STEP],
    "stay": [0, 0, 0, 0, 0],
}
REVERSE = {"go forward": "go backward", "go backward": "go forward", "go left": "go right", "go right": "go left",
           "turn left": "turn right", "turn right": "turn left", "stay": "stay"}
POLICIES = ("scripted", "random", "mixed")


def plan_leave(policy: str, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Actions ``(text, repeats)`` that take the player away from its start.

    scripted: turn, walk, turn, walk (around a corner); random: 2-4 random moves/turns of 2-8 tics.
    """
    if policy == "scripted":
        turn = lambda: ("turn left" if rng.random() < 0.5 else "turn right", int(rng.choice([2, 4, 8])))  # noqa: E731
        return [turn(), ("go forward", int(rng.integers(6, 17))), turn(), ("go forward", int(rng.integers(4, 11)))]
    names = [a for a in ACTIONS if a != "stay"]
    return [(names[int(rng.integers(len(names)))], int(rng.integers(2, 9))) for _ in range(int(rng.integers(2, 5)))]


def _scenario_path(scenario: str) -> str:
    import vizdoom

    if os.path.isfile(scenario):
        return scenario
    path = os.path.join(os.path.dirname(vizdoom.__file__), "scenarios", f"{scenario}.wad")
    if not os.path.isfile(path):
        names = sorted(p[:-4] for p in os.listdir(os.path.dirname(path)) if p.endswith(".wad"))
        raise UserInputError(f"ViZDoom scenario {scenario!r} not found; expected a .wad path or one of {names}")
    return path


class DoomRecorder:
    """One headless ViZDoom game that records revisit episodes (frames, per-frame actions and poses)."""

    def __init__(self, scenario: str = "my_way_home", doom_map: str = "map01", resolution: str = "160x120",
                 seed: int = 0) -> None:
        try:
            import vizdoom as vzd
        except ImportError:
            raise UserInputError("the recorder needs ViZDoom: pip install 'slowfast-vgen[game]'") from None
        name = f"RES_{resolution.upper()}"
        if not hasattr(vzd.ScreenResolution, name):
            raise UserInputError(f"ViZDoom resolution {resolution!r} is not supported (try 160x120, 320x240)")
        game = vzd.DoomGame()
        game.set_doom_scenario_path(_scenario_path(scenario))
        game.set_doom_map(doom_map)
        game.set_screen_resolution(getattr(vzd.ScreenResolution, name))
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        for setter in ("hud", "weapon", "crosshair", "messages", "particles", "decals", "effects_sprites"):
            getattr(game, f"set_render_{setter}")(False)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_available_buttons([vzd.Button.MOVE_FORWARD, vzd.Button.MOVE_BACKWARD, vzd.Button.MOVE_LEFT,
                                    vzd.Button.MOVE_RIGHT, vzd.Button.TURN_LEFT_RIGHT_DELTA])
        V = vzd.GameVariable
        game.set_available_game_variables([V.POSITION_X, V.POSITION_Y, V.POSITION_Z, V.ANGLE, V.VELOCITY_X,
                                           V.VELOCITY_Y])
        game.add_game_args("+sv_cheats 1")  # allows `warp`
        game.set_episode_timeout(1_000_000)
        game.set_mode(vzd.Mode.PLAYER)
        game.set_seed(seed % (2**31))
        try:
            game.init()
        except Exception as err:  # noqa: BLE001 - vizdoom raises its own exception types
            raise UserInputError(f"ViZDoom failed to start: {err}") from None
        self.game = game

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.game.get_state()
        return s.screen_buffer.copy(), np.asarray(s.game_variables, dtype=np.float64)  # (H, W, 3), (6,)

    def _tic(self, text: str) -> None:
        self.game.make_action(ACTIONS[text])

    def record_episode(self, policy: str, rng: np.random.Generator, loops: int = 1) -> dict[str, Any]:
        """One episode of ``loops`` leave-and-return trips from the same start; returns frames and ground truth."""
        game = self.game
        game.new_episode()
        for _ in range(8):  # the engine ignores turn commands in the first tics of an episode
            self._tic("stay")
        _, v = self._state()
        game.send_game_command(f"warp {int(v[0])} {int(v[1])}")  # an integer start can be warped back to exactly
        self._tic("stay")  # the frame right after a warp is stale
        self._tic("stay")
        self._settle(record=False)
        frame, v = self._state()
        self.frames, self.poses, self.labels = [frame], [v[:4]], [None]
        revisits = []
        for loop in range(loops):
            anchor = 0  # every trip starts from, and returns to, the episode's first place
            pol = policy if policy != "mixed" else POLICIES[loop % 2] if loops > 1 else POLICIES[int(rng.integers(2))]
            plan = plan_leave(pol, rng)
            for text, n in plan:
                self._record(text, n)
            for text, n in reversed(plan):
                self._record(REVERSE[text], n)
            self._settle(record=True)
            revisits.append(self._return_to(anchor))
        return {"frames": np.stack(self.frames), "labels": self.labels, "poses": np.stack(self.poses),
                "revisits": revisits}

    def _record(self, text: str, n: int = 1) -> None:
        for _ in range(n):
            self._tic(text)
            frame, v = self._state()
            self.frames.append(frame)
            self.poses.append(v[:4])
            self.labels.append(text)

    def _settle(self, record: bool, max_tics: int = 70) -> None:
        """Idle ("stay") until momentum is gone."""
        for _ in range(max_tics):
            _, v = self._state()
            if v[4] == 0 and v[5] == 0:
                return
            self._record("stay") if record else self._tic("stay")

    def _return_to(self, anchor: int) -> dict[str, Any]:
        target = self.poses[anchor]
        for _ in range(32):  # a turn that the engine dropped: turn back to the anchor angle
            diff = (target[3] - self.poses[-1][3] + 180) % 360 - 180
            if abs(diff) < 1e-3:
                break
            self._record("turn left" if diff > 0 else "turn right")
        here = self.poses[-1]
        distance = float(np.hypot(here[0] - target[0], here[1] - target[1]))
        if distance > 0:
            self.game.send_game_command(f"warp {int(target[0])} {int(target[1])}")
            self._tic("stay")  # the frame right after a warp is stale: not recorded
            self._record("stay")
        for _ in range(35):  # animated sprites (items) cycle: stay until the view matches (at most one second)
            if np.array_equal(self.frames[-1], self.frames[anchor]):
                break
            self._record("stay")
        pose_error = float(np.abs(self.poses[-1] - target).max())
        mae = float(np.abs(self.frames[-1].astype(np.int16) - self.frames[anchor]).mean())
        return {"frame": len(self.frames) - 1, "of_frame": anchor, "warp_distance": round(distance, 3),
                "pose_error": pose_error, "pixel_mae": mae, "exact": pose_error == 0 and mae == 0}

    def close(self) -> None:
        self.game.close()
