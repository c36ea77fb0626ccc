"""The demo on a flow-matching teacher: BOOT, then the refinement phase.

    python -m boot_jax.train --config configs/digits_flow.py \\
      --workdir /tmp/boot_digits_flow

The teacher (W/teacher, trained first when missing with
`configs/digits_teacher.py:flow`) is the demo's UNet trained by flow
matching on the rectified flow `x_t = (1 - t) x0 + t eps`: it predicts
the velocity `eps - x0`, as Stable Diffusion 3 and FLUX do, and samples by
Euler steps (the DDIM step on this path; docs/method.md, "Flow-matching
teachers"). Everything else is configs/digits.py's: the student starts
as the teacher's network, BOOT on 16 steps for 4,000 steps, then 600
steps of the refinement phase; the run evaluates itself against the
teacher's Euler steps.

Variants (the part after ':'):
  (none), refine  BOOT, then the refinement phase (the demo's recipe).
  boot            BOOT alone.
"""

from boot_jax.config import recipes

ARGS = recipes.DEMO_ARGS


def get_config(arg: str = ""):
  return recipes.digits_demo_config("digits_flow", arg)
