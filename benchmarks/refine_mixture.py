r"""The refinement phase on the analytic mixture, against BOOT alone.

    python benchmarks/refine_mixture.py [--preset circle] [--steps 1000] \
      [--write]

Trains configs/gmm.py's preset as shipped (BOOT), then runs the
refinement phase (boot.refine) from that student with several settings,
and reports for each the student's MMD to 4,000 exact mixture samples
over the teacher DDIM-N's (mean over 3 evaluation seeds), the component
weight error, the agreement with DDIM-N and the shape of the student's
components (core width, samples outside every component), with wall
times. `--write` puts the table into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats  # noqa: E402

from boot_jax.config import recipes
from boot_jax.distill import conditions, refine
from boot_jax.evaluation import mixture_eval
from boot_jax.teachers import gmm  # noqa: E402
from boot_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def markers(preset: str) -> tuple[str, str]:
  return (
    f"<!-- refine-mixture {preset}: begin -->",
    f"<!-- refine-mixture {preset}: end -->",
  )


SEEDS = (12345, 1, 2)
# (name, refine settings over the preset's own): the preset's settings,
# without and with (in effect only) BOOT's loss, SiD's own optimiser
# settings, and a longer run.
VARIANTS = (
  ("the preset's settings", {}),
  ("the preset's, boot_weight 0 (SiD alone)", dict(boot_weight=0.0)),
  ("the preset's, boot_weight 1e5 (BOOT's loss dominates: a control)",
   dict(boot_weight=1e5)),
  ("SiD's optimiser settings (lr 1e-5, fake lr 1e-5), boot_weight 0",
   dict(lr=1e-5, fake_lr=1e-5, boot_weight=0.0)),
  ("the preset's settings, 3x the steps", dict(steps_factor=3)),
)  # fmt: skip
SHAPE_NUM = 20000  # samples for the component shape columns


def shape(teacher, x) -> dict:
  """How each sample sits in its nearest component: the per-coordinate
  std of the samples inside the component's 99% radius (`core_std`), and
  the fraction outside every component's 99% radius (`outside`; about 1%
  for exact samples, a little more where components overlap)."""
  p = teacher.params
  mu, std = np.asarray(p["means"]), np.asarray(p["stds"])
  x = np.asarray(x, np.float64)
  d = np.sqrt(((x[:, None] - mu[None]) ** 2).sum(-1))
  k = d.argmin(1)
  radius = std * np.sqrt(scipy.stats.chi2.ppf(0.99, x.shape[1]))
  inside = d[np.arange(len(x)), k] <= radius[k]
  core = np.sqrt(np.mean((x - mu[k])[inside] ** 2))
  return {"core_std": float(core), "outside": float(1 - inside.mean())}


def references(setup) -> dict:
  """`shape` of exact samples and of the teacher's DDIM-N."""
  eps, cond = conditions.eval_inputs(setup.teacher, SHAPE_NUM, 7)
  true, _ = gmm.sample(setup.teacher.params, jax.random.key(8), SHAPE_NUM)
  ddim = mixture_eval.teacher_ddim(
    setup.teacher, setup.grid, eps, cond, None, 1000
  )
  return {
    "exact": shape(setup.teacher, true),
    "ddim": shape(setup.teacher, ddim),
  }


def report(setup, params, guidance) -> dict:
  rows = [
    mixture_eval.gmm_report(
      setup.teacher, setup.student, params, setup.grid, guidance, 4000, seed
    )
    for seed in SEEDS
  ]
  keys = ("mmd_ratio", "weight_error", "agreement")
  out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  out["weight_error_200k"] = mixture_eval.weight_error(
    setup.teacher, setup.student, params
  )
  eps, cond = conditions.eval_inputs(setup.teacher, SHAPE_NUM, 7)
  x = mixture_eval.student_one_step(setup.student, params, eps, cond, 1000)
  return {**out, **shape(setup.teacher, x)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="circle")
  p.add_argument(
    "--steps", type=int, help="refinement steps (default: the preset's)"
  )
  p.add_argument("--write", action="store_true")
  args = p.parse_args()
  config = recipes.gmm_config(args.preset)
  config.boot.refine = True
  if args.steps is not None:
    config.refine.steps = args.steps
  base_steps = int(config.refine.steps)
  resolved = refine.settings(config)  # lr unset: scaled by the dimension
  preset_settings = ", ".join(
    f"{k} {resolved[k]:g}" for k in ("lr", "fake_lr", "boot_weight")
  )
  guidance = config.boot.get("guidance")
  setup = trainer.setup(config)
  t0 = time.perf_counter()
  state, _ = trainer.run(setup, until=config.train.steps)
  boot_s = time.perf_counter() - t0
  rows = [
    (
      "BOOT alone",
      config.train.steps,
      boot_s,
      report(setup, state.params, guidance),
    )
  ]
  print(rows[-1], flush=True)
  for name, overrides in VARIANTS:
    variant = config.copy_and_resolve_references()
    overrides = dict(overrides)
    steps = base_steps * overrides.pop("steps_factor", 1)
    variant.refine.update(overrides)
    variant.refine.steps = steps
    s = trainer.setup(variant)
    t0 = time.perf_counter()
    # The step donates its input state: each variant gets a copy.
    refined, _ = trainer.run(s, state=jax.tree.map(jnp.copy, state))
    seconds = time.perf_counter() - t0
    rows.append(
      (
        f"BOOT + refine: {name}",
        steps,
        seconds,
        report(s, refined.params, guidance),
      )
    )
    print(rows[-1], flush=True)
  begin, end = markers(args.preset)
  refs = references(setup)
  lines = [
    begin,
    f"## Refinement on the mixture ({args.preset})",
    "",
    f"Command: `python benchmarks/refine_mixture.py --preset {args.preset}"
    f"{'' if args.steps is None else f' --steps {args.steps}'} --write`; "
    f"machine: {platform.platform()}, "
    f"{os.cpu_count()} CPU cores; date {datetime.date.today().isoformat()}.",
    "",
    "MMD ratio: the student's one-step MMD to 4,000 exact mixture samples "
    "over the teacher DDIM-N's (N = the training grid), mean over 3 "
    "evaluation seeds; weight error: max |component frequency - weight| "
    "on the same 4,000 samples (mean over the seeds; exact mixture samples "
    "score about 0.012 there: multinomial noise) and on 200,000 (noise "
    "about 0.0007 per component); "
    "agreement: same component as DDIM-N from the same noise. Core std: "
    "per-coordinate std of the samples inside their nearest component's "
    "99% radius (the components' std is "
    f"{float(np.asarray(setup.teacher.params['stds'])[0]):g}); outside: the "
    f"fraction outside every component's 99% radius ({SHAPE_NUM:,} "
    "samples each). Exact samples: core std "
    f"{refs['exact']['core_std']:.3f}, outside {refs['exact']['outside']:.4f}; "
    f"the teacher's DDIM-N: {refs['ddim']['core_std']:.3f}, "
    f"{refs['ddim']['outside']:.4f}.",
    "",
    f"The preset's refinement settings: {preset_settings}.",
    "",
    "| run | steps | wall s | MMD ratio | weight error | weight error "
    "(200k) | agreement | core std | outside |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, steps, seconds, r in rows:
    lines.append(
      f"| {name} | {steps} | {seconds:.0f} | {r['mmd_ratio']:.3f} | "
      f"{r['weight_error']:.4f} | {r['weight_error_200k']:.4f} | "
      f"{r['agreement']:.4f} | "
      f"{r['core_std']:.3f} | {r['outside']:.4f} |"
    )
  lines += ["", end]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.write:
    import demo  # noqa: PLC0415

    demo.write_section(ROOT / "docs" / "BENCHMARKS.md", text, begin, end)


if __name__ == "__main__":
  main()
