"""Evaluation: the revisit benchmark, the paper's table layouts and reports."""
