"""The demo: BOOT, then the refinement phase, on a UNet teacher trained on
scikit-learn's 8x8 digits.

    python -m boot_jax.train --config configs/digits.py \\
      --workdir /tmp/boot_digits

`teacher.path` names the teacher's work directory (relative paths are
inside --workdir; default W/teacher). When it holds no trained teacher,
train says so and first trains one with configs/digits_teacher.py. The
student is the teacher's UNet initialised from its weights; distillation
reads only noise. At the end the run evaluates itself (eval.json): the
student against the teacher's DDIM, Frechet distances in a digits
classifier's feature space, and images/s.

Use an existing teacher:  --config.teacher.path=/path/to/teacher_workdir

Variants (the part after ':'):
  (none), refine  4000 BOOT steps, then 600 steps of the refinement phase
                  (boot.refine; docs/method.md): the demo.
  boot            BOOT alone (the demo before the refinement existed).
"""

from boot_jax.config import recipes

ARGS = recipes.DEMO_ARGS


def get_config(arg: str = ""):
  return recipes.digits_demo_config("digits", arg)
