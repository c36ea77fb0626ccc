"""Teacher for the demo: a small UNet on scikit-learn's 8x8 digits.

    python -m boot_jax.train_teacher --config configs/digits_teacher.py \\
      --workdir /tmp/digits_teacher
    python -m boot_jax.train_teacher --config configs/digits_teacher.py:cond \\
      --workdir /tmp/digits_teacher_cond     # class-conditional, null class
    python -m boot_jax.train_teacher --config configs/digits_teacher.py:flow \\
      --workdir /tmp/digits_teacher_flow     # flow matching

v-prediction on the squaredcos_cap_v2 table (T = 1000), EMA 0.999. The
digits ship inside scikit-learn; nothing is downloaded. Train on your own
images with --config.data.source=folder --config.data.path=DIR (or idx with
--config.data.path=IMAGES.idx --config.data.labels_path=LABELS.idx), and
--config.data.image_size / --config.data.channels to match. ':cond' adds a
class embedding with a null class (labels dropped 10% of the time), for
classifier-free guidance. ':flow' trains by flow matching instead: the
rectified flow `x_t = (1 - t) x0 + t eps`, the network predicting the
velocity `eps - x0` (as SD3 and FLUX), sampled by Euler steps.
"""

from boot_jax.config import recipes

ARGS = ("", "cond", "flow")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(
      f"unknown digits teacher variant {arg!r}; expected cond or flow"
    )
  return recipes.digits_teacher_config(
    conditional=arg == "cond", flow=arg == "flow"
  )
