"""BOOT: the objective (`boot`), the student (`student`), the data-free
inputs (`conditions`), the train state and jitted step (`state`, `step`),
and the distribution-matching refinement (`refine`).
"""
