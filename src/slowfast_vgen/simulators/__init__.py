"""Simulators: environments that render frames under text actions with exact ground truth (poses, revisits).

* :mod:`slowfast_vgen.simulators.world`: the built-in world (no download; the demo, the tests, the revisit
  benchmark's default);
* :mod:`slowfast_vgen.simulators.vizdoom`: the ViZDoom recorder (``sfvgen data record``);
* the planning tasks' environments live with their tasks (:mod:`slowfast_vgen.planning`).

Data code (:mod:`slowfast_vgen.datamodules`) and planning import these; the simulators import neither.
"""
