"""Simulators: environments that render frames under text actions with exact ground truth (poses, revisits).

* :mod:`slowfast_vgen.simulators.world`: the built-in world (no download; the demo, the tests, the revisit
  benchmark's default);
* :mod:`slowfast_vgen.simulators.vizdoom`: the ViZDoom recorder (``sfvgen data record``);
* :mod:`slowfast_vgen.simulators.memory_maze`: the Memory Maze recorder (``sfvgen data record --env memory-maze``):
  revisit episodes in 3D mazes whose way back is not the way out reversed;
* the planning tasks' environments live with their tasks (:mod:`slowfast_vgen.planning`).

Data code (:mod:`slowfast_vgen.datamodules`) and planning import these; the simulators import neither.
"""
