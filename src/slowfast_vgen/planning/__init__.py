"""Video planning (Sec. 3.4): inverse dynamics model; subgoal execution comes next (issue 6)."""
