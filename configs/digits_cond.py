"""Class-conditional digits: a teacher with a null class, distilled with CFG.

    python -m boot_jax.train --config configs/digits_cond.py \\
      --workdir /tmp/boot_digits_cond
    python -m boot_jax.sample --workdir /tmp/boot_digits_cond \\
      --out /tmp/threes.npz --label 3 --num 64

The teacher (W/teacher, trained first when missing with
`configs/digits_teacher.py:cond`) is our UNet with a class embedding and a
null class (labels dropped 10% of the time in training). BOOT draws labels
uniformly (or from `teacher.label_logits`, log frequencies, e.g.
`--config.teacher.label_logits="(0,0,0,0,0,0,0,0,0,1.1)"`) and the teacher
guides every step with w = 2; the evaluation reports, next to FID, how
often the evaluation classifier sees the requested class.

`configs/digits_cond.py:guided` trains one guidance-conditioned student
for every w in [0, 4] instead (`sample --guidance w`);
`configs/digits_cond.py:refine` adds 600 steps of the refinement phase
after BOOT (boot.refine; docs/method.md) with teacher and fake network
guided at w = 1.5 (refine.guidance): FID-digits and class accuracy in
docs/BENCHMARKS.md.
"""

from boot_jax.config import recipes

ARGS = ("", "guided", "refine")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown digits_cond variant {arg!r}; expected {ARGS}")
  c = recipes.digits_boot_config("digits_cond")
  if arg == "guided":
    c.boot.guidance_range = (0.0, 4.0)
    c.eval.guidance = 2.0
  else:
    c.boot.guidance = 2.0
  if arg == "refine":
    c.boot.refine = True
    c.refine.steps = 600
    # SiD-LSG's choice: teacher and fake network both guided, with a
    # smaller w than BOOT's (docs/method.md, "Refinement").
    c.refine.guidance = 1.5
  return c
