"""Video planning by generation (paper Sec. 3.4): a subgoal -> a generated video chunk -> actions -> the world.

For each subgoal (from a :data:`~slowfast_vgen.planning.tasks.SubgoalSource`: a scripted list or a language
model), the video model generates the next chunk of ``chunk_frames`` frames from the current context and the
subgoal text (a UPDP step, phi(. | x_0, c)); the inverse dynamics model reads the actions between consecutive
frames of [last context frame, generated frames] (the policy pi); the actions are executed in the task's
environment. With a Temp-LoRA learner attached to the generator, Theta is updated after every chunk
(Alg. 1a), so the model keeps an episodic memory of the whole long-horizon episode.

``condition_on`` picks what the next chunk is conditioned on: ``"observed"`` (closed loop: the frames the
environment showed while executing; default) or ``"generated"`` (open loop: the generated chunk, i.e. one
long generated video, executed as it is planned).

``given_actions``: primitive actions executed verbatim instead of the IDM's for the first subgoals (the task's
set-up phase, e.g. moving the cubes away): a chunk is still generated for every subgoal (Temp-LoRA learns
the episode as it unfolds), but the task score then measures only the memory-dependent remainder. Without
it, a policy that never moves a cube would "return" it perfectly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from slowfast_vgen.seeds import stable_seed
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation import LongVideoGenerator
from slowfast_vgen.temp_lora import UpdateRecord
from slowfast_vgen.planning.idm import InverseDynamicsModel
from slowfast_vgen.planning.tasks import PlanningTask, ScriptedSubgoals, SubgoalSource

CONDITIONS = ("observed", "generated")


@dataclass
class PlanResult:
    """One executed episode: the generated plan, what the environment did, and the task score."""

    seed: int
    subgoals: list[str]
    generated: torch.Tensor          # (T, C, H, W): the first frame, then every generated chunk
    observed: torch.Tensor           # (T, C, H, W): the first frame, then the frames seen while executing
    executed: list[str]              # primitive actions sent to the environment
    score: float
    updates: list[UpdateRecord | None] = field(default_factory=list)


class PlanExecutor:
    """Runs planning episodes of a task with a video generator and an inverse dynamics model.

    Args:
        generator: the long-video generator (its ``temp_lora`` set = with fast learning, None = without).
        idm: maps two consecutive frames to a primitive action of the task.
        condition_on: ``"observed"`` (closed loop) or ``"generated"`` (open loop).
        max_subgoals: stop after this many subgoals even if the source goes on (a language model may not stop).
    """

    def __init__(self, generator: LongVideoGenerator, idm: InverseDynamicsModel, condition_on: str = "observed",
                 max_subgoals: int = 256) -> None:
        if condition_on not in CONDITIONS:
            raise UserInputError(f"condition_on {condition_on!r}; expected one of {list(CONDITIONS)}")
        self.generator, self.idm, self.condition_on, self.max_subgoals = generator, idm, condition_on, max_subgoals

    @torch.no_grad()
    def run(self, task: PlanningTask, seed: int, subgoals: SubgoalSource | None = None,
            given_actions: list[str] | None = None, progress: bool = False) -> PlanResult:
        """Execute episode ``seed`` of ``task``; ``subgoals`` defaults to the task's scripted decomposition."""
        given = list(given_actions or [])
        if len(given) % task.chunk_frames:
            raise UserInputError(f"given_actions: {len(given)} actions are not whole chunks of {task.chunk_frames}")
        unknown = sorted(set(self.idm.actions) - set(task.actions))
        if unknown:
            raise UserInputError(f"the inverse dynamics model predicts {unknown}, which task {task.name!r} does not "
                                 f"accept; expected actions among {list(task.actions)}")
        gen = self.generator
        if gen.chunk_frames != task.chunk_frames:
            raise UserInputError(f"the generator makes chunks of {gen.chunk_frames} frames; task {task.name!r} "
                                 f"executes {task.chunk_frames} actions per subgoal")
        first = task.reset(seed)  # (C, H, W)
        source = subgoals if subgoals is not None else ScriptedSubgoals(task.subgoals())
        device = next(gen.unet.parameters()).device
        if gen.temp_lora is not None:
            gen.temp_lora.reset()  # a new episode: Theta_0
        context = gen.autoencoder.encode(first[None, None].to(device))  # (1, C, 1, h, w)
        generated, observed, executed, done, updates = [first], [first], [], [], []
        bar = tqdm(desc=f"{task.name} episode {seed}", unit="subgoal", disable=not progress)
        while len(done) < self.max_subgoals:
            goal = source(list(done), observed[-1])
            if goal is None:
                break
            chunk = next(gen.stream(None, [goal], seed=stable_seed("plan", seed, len(done)), context_latents=context))
            frames = chunk.video[0].cpu()  # (f_g, C, H, W)
            k = len(done) * task.chunk_frames
            if k < len(given):  # the set-up phase: the expert's actions
                actions = given[k : k + task.chunk_frames]
            else:
                actions = self.idm.infer(torch.cat([observed[-1][None] if self.condition_on == "observed"
                                                    else generated[-1][None], frames]))
            seen = [task.step(a) for a in actions]
            generated += list(frames)
            observed += seen
            executed += actions
            done.append(goal)
            updates.append(chunk.update)
            if self.condition_on == "observed":
                context = gen.autoencoder.encode(torch.stack(observed[-gen.context_frames :])[None].to(device))
            else:
                context = torch.cat([context, chunk.latents], dim=2)[:, :, -gen.context_frames :]
            bar.update()
        bar.close()
        return PlanResult(seed=seed, subgoals=done, generated=torch.stack(generated), observed=torch.stack(observed),
                          executed=executed, score=float(task.score()), updates=updates)
