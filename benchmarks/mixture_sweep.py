r"""BOOT and the refinement on random Gaussian mixtures nobody tuned for.

    python benchmarks/mixture_sweep.py [--num 12] [--jobs 2] \
      [--refine-factors 1,5] [--set KEY=VALUE ...] [--json OUT] [--write]
    python benchmarks/mixture_sweep.py --results OUT [--write]
    python benchmarks/mixture_sweep.py --compare LABEL=OUT ...

`boot_jax.config.recipes.sweep_mixture(i)` draws mixture `i` of the sweep
(documented there): 2-D and 8-D alternately, 4 to 16 components, unequal
stds and weights, from seeds the presets do not use. Each mixture is
trained as `configs/gmm.py:sweepI` ships (the circle's settings; only the
teacher differs): BOOT, then one refinement run from BOOT's student to
the largest `--refine-factors` multiple of its default length, measured
at each factor's length. Per mixture and run: the MMD ratio to the
teacher's DDIM-N (N = the training grid) on 4,000 fresh eps (mean over 3
evaluation seeds), the component weight error on 200,000 samples, the
agreement with DDIM-N from the same eps, the shape of the components
(`shape`), and the per-time error of the student's trajectory
`g(eps, t)` against the teacher's (`per_time_error`), binned by `t`. The
run is traced: the MMD ratio beside data-free candidates for a progress
signal (the refinement's logged losses; the probe of
`boot_jax.evaluation.probe`, the student against the teacher's DDIM-N on
held-out noise, as a run logs it) every `BOOT_TRACE_EVERY` BOOT steps and
every `TRACE_EVERY` refinement steps.

`--jobs` runs that many mixtures at once, each in its own process pinned
to one core with XLA's single-threaded CPU runtime. `--set` changes the
config of every mixture (ablations; the table records it). `--write` puts
the table into docs/BENCHMARKS.md and the plots into
docs/mixture_sweep.png and docs/mixture_sweep_trace.png; `--results`
does that from an earlier `--json` without running; `--compare` puts
BOOT's rows of several `--json` files side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from boot_jax.config import defaults, recipes
from boot_jax.distill import conditions, refine
from boot_jax.evaluation import mixture_eval
from boot_jax.evaluation import probe as probe_lib
from boot_jax.teachers import gmm
from boot_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN = "<!-- mixture-sweep: begin -->"
END = "<!-- mixture-sweep: end -->"
EVAL_SEEDS = (12345, 1, 2)
# Edges of the per-time error's bins, as fractions of the teacher's T.
TIME_BINS = (0.0, 0.05, 0.25, 0.5, 0.75, 1.01)


def mixture_config(index: int, overrides=()):
  """configs/gmm.py:sweep<index> (the circle's settings, the teacher
  `recipes.sweep_mixture(index)`) with the refinement on (its optimizer
  state exists from the start, as in a run with boot.refine=true) and
  `overrides`, `key=value` strings over the config (ablations)."""
  config = recipes.gmm_config(f"sweep{index}")
  for item in overrides:
    key, _, value = item.partition("=")
    *parents, leaf = key.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      old = node[leaf]
      node[leaf] = json.loads(value) if old is None else type(old)(value)
    except (KeyError, AttributeError):
      raise SystemExit(f"--set {item}: the config has no key {key!r}") from None
    except (TypeError, ValueError) as e:
      raise SystemExit(f"--set {item}: bad value ({e})") from None
  # The phase's metrics every 50 steps for the trace (logging only).
  config.train.log_every = 50
  config.boot.refine = True
  return config


def per_time_error(setup, params, num: int = 2000, seed: int = 7):
  """`mean ||g(eps, t) - y_t||^2 / (D var)` per grid time, where `y_t` is
  the teacher's trajectory in signal space from the same eps as BOOT
  defines it (docs/method.md): `y_T = f(eps, T)`, then the exact DDIM step
  `y_s = y_t + delta (f(alpha_t y_t + sigma_t eps, t) - y_t)` down the
  grid, so a perfect BOOT student has zero error at every time; `var` is
  the data's per-coordinate variance. (This trajectory is DDIM-N started
  from `alpha_T f(eps, T) + sigma_T eps` instead of `eps`: the same up to
  `alpha_T`, 0.0064 for the mixture's table.) Returns `(t / T [N + 1],
  error [N + 1])`, ascending in t."""
  teacher, student, grid = setup.teacher, setup.student, setup.grid
  eps, cond = conditions.eval_inputs(teacher, num, seed)
  eps = jnp.asarray(eps)

  def at(j):
    return jnp.full(eps.shape[:1], float(grid.times[j]))

  n = grid.num_steps
  y_ref = teacher.x0(teacher.params, eps, at(n), cond)
  errors = [None] * (n + 1)
  for j in range(n, -1, -1):
    if j < n:
      a_t, s_t = float(grid.alphas[j + 1]), float(grid.sigmas[j + 1])
      a_s, s_s = float(grid.alphas[j]), float(grid.sigmas[j])
      f = teacher.x0(teacher.params, a_t * y_ref + s_t * eps, at(j + 1), cond)
      delta = 1.0 - (s_s * a_t) / (s_t * a_s)
      y_ref = y_ref + delta * (f - y_ref)
    y = student.apply(params, eps, float(grid.times[j]), cond)
    if student.space == "x":  # the ablation that predicts x_t
      y = (y - float(grid.sigmas[j]) * eps) / float(grid.alphas[j])
    errors[j] = float(jnp.mean(jnp.square(y - y_ref)))
  var = mixture_eval.data_variance(teacher.params)
  t_max = float(teacher.schedule.t_max)
  return np.asarray(grid.times) / t_max, np.asarray(errors) / var


def shape(params, x) -> tuple[float, float]:
  """How samples sit in their components: `(core, outside)`. Each sample
  goes to its most likely component (`gmm.assign`); `outside` is the
  fraction farther than that component's 99% radius, `core` the RMS of
  `(x - mu_k) / s_k` per coordinate over the others (about 0.95 for exact
  samples: the 99% radius cuts the tails)."""
  k = np.asarray(gmm.assign(params, x))
  mu = np.asarray(params["means"], np.float64)[k]
  s = np.asarray(params["stds"], np.float64)[k]
  z = (np.asarray(x, np.float64) - mu) / s[:, None]
  d = np.sqrt((z**2).sum(-1))
  inside = d <= np.sqrt(scipy.stats.chi2.ppf(0.99, x.shape[1]))
  return float(np.sqrt(np.mean(z[inside] ** 2))), float(1 - inside.mean())


def shapes(setup, params, num: int = 20000, seed: int = 7) -> dict:
  """`shape` of the student's samples, the teacher's DDIM-N's from the
  same eps, and exact samples."""
  teacher = setup.teacher
  eps, cond = conditions.eval_inputs(teacher, num, seed)
  samples = dict(
    student=mixture_eval.student_one_step(
      setup.student, params, eps, cond, 5000
    ),
    ddim=mixture_eval.teacher_ddim(teacher, setup.grid, eps, cond, None, 5000),
    exact=gmm.sample(teacher.params, jax.random.key(seed + 1), num)[0],
  )
  out = {}
  for name, x in samples.items():
    out[f"core_{name}"], out[f"outside_{name}"] = shape(
      teacher.params, np.asarray(x)
    )
  return out


def binned(t, err) -> list[float]:
  out = []
  for lo, hi in zip(TIME_BINS[:-1], TIME_BINS[1:], strict=True):
    keep = (t >= lo) & (t < hi)
    out.append(float(np.mean(err[keep])) if keep.any() else float("nan"))
  return out


def measure(setup, params, probe) -> dict:

  rows = [
    mixture_eval.gmm_report(
      setup.teacher, setup.student, params, setup.grid, None, 4000, seed
    )
    for seed in EVAL_SEEDS
  ]
  out = {
    k: float(np.mean([r[k] for r in rows]))
    for k in ("mmd_ratio", "agreement", "mmd_student", "mmd_teacher")
  }
  out["weight_error"] = mixture_eval.weight_error(
    setup.teacher, setup.student, params
  )
  out.update(shapes(setup, params))
  out.update(probe(params))
  t, err = per_time_error(setup, params)
  out["time"] = t.tolist()
  out["time_error"] = err.tolist()
  out["time_error_bins"] = binned(t, err)
  return out


TRACE_EVERY = 250  # refinement steps between the trace's points
BOOT_TRACE_EVERY = 1000  # BOOT steps between the trace's points


def trace_point(setup, params, history, probe) -> dict:
  """A point of a run's trace: MMD ratio and agreement (one evaluation
  seed) beside data-free candidates for a progress signal: the probe (as
  a run logs it) and the phase's logged losses, averaged over the rows
  since the previous point."""
  r = mixture_eval.gmm_report(
    setup.teacher, setup.student, params, setup.grid, None, 4000, EVAL_SEEDS[0]
  )
  point = {k: float(r[k]) for k in ("mmd_ratio", "agreement")}
  point.update(probe(params))
  for key in ("score_gap", "loss_fake", "loss_sid", "loss"):
    values = [row[key] for row in history if key in row]
    if values:
      point[key] = float(np.mean(values))
  return point


def run_mixture(index: int, refine_factors, overrides=()) -> dict:
  """BOOT on sweep mixture `index`, then one refinement run to the
  largest factor, measured at each factor's length (the phase's steps do
  not depend on its length, so the run to 5x passes through 1x) and
  traced every `TRACE_EVERY` steps."""
  factors = sorted(refine_factors)
  config = mixture_config(index, overrides)
  base = int(config.refine.steps)
  config.refine.steps = base * max(factors, default=1)
  setup = trainer.setup(config)
  probe = probe_lib.make_probe(
    setup.teacher, setup.student, setup.grid, setup.mesh, config, _quiet
  )
  boot_steps = int(config.train.steps)
  state, seconds, boot_trace = setup.init_state(), 0.0, []
  while int(state.step) < boot_steps:
    until = min(int(state.step) + BOOT_TRACE_EVERY, boot_steps)
    t0 = time.perf_counter()
    state, history = trainer.run(setup, state=state, until=until)
    seconds += time.perf_counter() - t0
    point = trace_point(setup, state.params, history, probe)
    boot_trace.append(dict(step=until, **point))
  runs = {"boot": dict(seconds=seconds)}
  runs["boot"].update(measure(setup, state.params, probe))
  print(f"sweep{index} boot {runs['boot']['mmd_ratio']:.3f}", flush=True)
  trace = [dict(step=0, **trace_point(setup, state.params, [], probe))]
  seconds, done = 0.0, 0
  for factor in factors:
    while done < factor * base:
      until = min(done + TRACE_EVERY, factor * base)
      t0 = time.perf_counter()
      state, history = trainer.run(setup, state=state, until=boot_steps + until)
      seconds += time.perf_counter() - t0
      done = until
      point = trace_point(setup, state.params, history, probe)
      trace.append(dict(step=done, **point))
    key = f"refine_x{factor}"
    runs[key] = dict(seconds=seconds)
    runs[key].update(measure(setup, state.params, probe))
    print(f"sweep{index} {key} {runs[key]['mmd_ratio']:.3f}", flush=True)
  return dict(
    index=index,
    name=recipes.sweep_mixture(index)["name"],
    refine_steps=base,
    overrides=list(overrides),
    boot_steps=boot_steps,
    runs=runs,
    trace=trace,
    boot_trace=boot_trace,
  )


def _quiet(*args):
  del args


def _worker_env() -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  ).strip()
  env["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  )
  return env


def run_all(indices, refine_factors, jobs: int, overrides=()) -> list[dict]:
  """Each mixture in a one-core worker process, `jobs` at a time."""
  cores = sorted(os.sched_getaffinity(0))
  pending = list(indices)
  running = []
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    while pending or running:
      while pending and len(running) < jobs:
        i = pending.pop(0)
        out = os.path.join(tmp, f"{i}.json")
        used = {c for _, _, c in running}
        core = next((c for c in cores if c not in used), cores[0])
        cmd = [
          sys.executable,
          __file__,
          "--worker",
          str(i),
          "--refine-factors",
          ",".join(map(str, refine_factors)),
          "--json",
          out,
        ] + [f"--set={item}" for item in overrides]
        proc = subprocess.Popen(
          cmd,
          env=_worker_env(),
          preexec_fn=lambda c=core: os.sched_setaffinity(0, {c}),
        )
        running.append((proc, out, core))
      time.sleep(1)
      for item in list(running):
        proc, out, _ = item
        if proc.poll() is None:
          continue
        running.remove(item)
        if proc.returncode:
          raise SystemExit(f"mixture worker failed: {proc.args}")
        with open(out) as f:
          results.append(json.load(f))
  return sorted(results, key=lambda r: r["index"])


def table(results, refine_factors, command: str) -> str:
  keys = ["boot"] + [f"refine_x{f}" for f in refine_factors]
  labels = {"boot": "BOOT"}
  labels.update({f"refine_x{f}": f"+ refine x{f}" for f in refine_factors})
  lines = [
    BEGIN,
    "## BOOT and the refinement on random mixtures (no per-mixture setting)",
    "",
    f"Command: `{command}`; machine: {platform.platform()}, "
    f"{os.cpu_count()} CPU cores; date {datetime.date.today().isoformat()}.",
    "",
    "Mixtures `boot_jax.config.recipes.sweep_mixture(i)`; every run is "
    "`configs/gmm.py:sweepI` as shipped: the circle's settings with only "
    "the teacher replaced "
    f"(BOOT {results[0]['boot_steps']} steps; the refinement "
    f"{results[0]['refine_steps']} steps times the factor). MMD ratio: "
    "the student's MMD to 4,000 exact samples over the teacher DDIM-N's, "
    "mean over 3 evaluation seeds; weight error: max |component frequency "
    "- weight| on 200,000 samples; agreement: same component as DDIM-N "
    "from the same eps. Per-time error: mean squared error of `g(eps, t)` "
    "against the signal of DDIM-N's trajectory from the same eps, over the "
    "data's per-coordinate variance, at the grid times with t / T in "
    f"each bin ({', '.join(f'{a:g}' for a in TIME_BINS[:-1])}, to 1). "
    "Core: the RMS of `(x - mu_k) / s_k` per coordinate over the samples "
    "inside their component's 99% radius (exact samples about 0.95); "
    "outside: the fraction beyond it (exact samples about 0.01); 20,000 "
    "samples each, the teacher's DDIM-N and exact samples on their own "
    "row.",
    "",
    "| mixture | run | MMD ratio | weight error | agreement | core | "
    "outside | per-time error by t / T bin | wall s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    for key in keys:
      run = r["runs"][key]
      bins = " / ".join(f"{e:.2g}" for e in run["time_error_bins"])
      lines.append(
        f"| {r['name']} | {labels[key]} | {run['mmd_ratio']:.2f} | "
        f"{run['weight_error']:.4f} | {run['agreement']:.4f} | "
        f"{run['core_student']:.2f} | {run['outside_student']:.3f} | "
        f"{bins} | {run['seconds']:.0f} |"
      )
    run = r["runs"]["boot"]
    lines.append(
      f"| {r['name']} | teacher DDIM-N / exact samples | | | | "
      f"{run['core_ddim']:.2f} / {run['core_exact']:.2f} | "
      f"{run['outside_ddim']:.3f} / {run['outside_exact']:.3f} | | |"
    )
  lines += ["", "| run | mean MMD ratio | max MMD ratio | max weight error "
            "| min agreement |", "|---|---|---|---|---|"]  # fmt: skip
  for key in keys:
    ratios = [r["runs"][key]["mmd_ratio"] for r in results]
    lines.append(
      f"| {labels[key]} | {np.mean(ratios):.2f} | {np.max(ratios):.2f} | "
      f"{max(r['runs'][key]['weight_error'] for r in results):.4f} | "
      f"{min(r['runs'][key]['agreement'] for r in results):.4f} |"
    )
  lines += [
    "",
    "![per-time error](mixture_sweep.png)",
    "",
    "![the refinement's trace](mixture_sweep_trace.png)",
    "",
  ]
  lines += trace_table(results) + ["", END]
  return "\n".join(lines) + "\n"


def compare(named: list[tuple[str, str]]) -> str:
  """A table of BOOT runs from several `--json` files (`(label, path)`),
  one row per variant and mixture: the ablations' table."""
  lines = [
    "| variant | mixture | MMD ratio | agreement | core | outside | "
    "error at t / T < 0.05 | 0.05-0.25 | wall s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for label, path in named:
    with open(path) as f:
      results = json.load(f)
    for r in results:
      run = r["runs"]["boot"]
      lines.append(
        f"| {label} | sweep{r['index']} | {run['mmd_ratio']:.2f} | "
        f"{run['agreement']:.4f} | {run.get('core_student', float('nan')):.2f}"
        f" | {run.get('outside_student', float('nan')):.3f} | "
        f"{run['time_error_bins'][0]:.2g} | {run['time_error_bins'][1]:.2g} | "
        f"{run['seconds']:.0f} |"
      )
  return "\n".join(lines) + "\n"


SIGNALS = ("probe_mmd2", "probe_mse", "score_gap", "loss_fake", "loss_sid")
BOOT_SIGNALS = ("probe_mmd2", "probe_mse", "loss")


def _rho(points, key) -> float:
  points = [p for p in points if key in p]
  return float(
    scipy.stats.spearmanr(
      [p[key] for p in points], [p["mmd_ratio"] for p in points]
    ).statistic
  )


def trace_table(results) -> list[str]:
  """How each data-free candidate follows the MMD ratio: Spearman's rank
  correlation over each mixture's trace of BOOT and of the refinement,
  and over the finished runs of every mixture."""
  if not all(r.get("trace") for r in results):
    return []
  lines = []
  phases = [("trace", TRACE_EVERY, SIGNALS, "the refinement")]
  if all(r.get("boot_trace") for r in results):
    phases.insert(0, ("boot_trace", BOOT_TRACE_EVERY, BOOT_SIGNALS, "BOOT"))
  for field, every, signals, phase in phases:
    lines += [
      f"Along {phase} (a point every {every} steps), Spearman's rank "
      "correlation of each data-free quantity with the MMD ratio (one "
      "evaluation seed) over each mixture's trace (1 = the quantity orders "
      "the points as the MMD does):",
      "",
      "| quantity | "
      + " | ".join(f"sweep{r['index']}" for r in results)
      + " | median |",
      "|---|" + "---|" * (len(results) + 1),
    ]
    for key in signals:
      rhos = [_rho(r[field], key) for r in results]
      lines.append(
        f"| {key} | "
        + " | ".join(f"{x:.2f}" for x in rhos)
        + f" | {np.median(rhos):.2f} |"
      )
    lines.append("")
  finished = [run for r in results for run in r["runs"].values()]
  if all("probe_mmd2" in run for run in finished):
    lines += [
      "Across the finished runs (every mixture, BOOT and each refinement "
      f"length: {len(finished)} points), Spearman's correlation with the "
      "MMD ratio: "
      + ", ".join(f"{k} {_rho(finished, k):.2f}" for k in BOOT_SIGNALS[:2])
      + ".",
      "",
    ]
  return lines[:-1] if lines and lines[-1] == "" else lines


def plot(results, refine_factors, path) -> None:
  import matplotlib  # noqa: PLC0415  (only for --write)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  keys = ["boot"] + [f"refine_x{f}" for f in refine_factors]
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
  for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
    for r in results:
      run = r["runs"][key]
      ax.semilogy(
        run["time"], run["time_error"], lw=1, label=f"sweep{r['index']}"
      )
    ax.set_xlabel("t / T")
    ax.set_title(key)
  np.atleast_1d(axes)[0].set_ylabel("||g(eps, t) - y_t||^2 / var")
  np.atleast_1d(axes)[-1].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=60)
  if not all(r.get("trace") for r in results):
    return
  keys = ("mmd_ratio",) + SIGNALS
  fig, axes = plt.subplots(1, len(keys), figsize=(3.5 * len(keys), 3.5))
  for ax, key in zip(axes, keys, strict=True):
    for r in results:
      points = [p for p in r["trace"] if key in p]
      ax.plot([p["step"] for p in points], [p[key] for p in points], lw=1)
    ax.set_xlabel("refinement step")
    ax.set_title(key)
  fig.tight_layout()
  fig.savefig(path.with_name(path.stem + "_trace.png"), dpi=60)


def results_command(results) -> str:
  """The command that ran `results` (recorded in each)."""
  commands = {r.get("command", "") for r in results}
  if len(commands) != 1 or not commands.pop():
    raise SystemExit("--results: the file does not record one command")
  return results[0]["command"]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num", type=int, default=12)
  p.add_argument("--only", help="comma-separated mixture indices")
  p.add_argument("--jobs", type=int, default=2)
  p.add_argument("--refine-factors", default="1,5")
  p.add_argument("--json", help="write the results here (a new file)")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    help="key=value over the shipped config, for every mixture (ablations)",
  )
  p.add_argument("--write", action="store_true")
  p.add_argument(
    "--compare",
    nargs="+",
    metavar="LABEL=JSON",
    help="print a table of BOOT runs from earlier --json files and exit",
  )
  p.add_argument(
    "--results",
    metavar="JSON",
    help="tabulate (and with --write, write) an earlier --json instead of "
    "running",
  )
  p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.json and args.worker is None and os.path.lexists(args.json):
    raise SystemExit(f"--json {args.json} exists; give a new path")
  if args.compare:
    print(compare([tuple(item.split("=", 1)) for item in args.compare]))
    return
  factors = [int(f) for f in args.refine_factors.split(",") if f]
  if args.worker is not None:
    result = run_mixture(args.worker, factors, args.set)
    with open(args.json, "w") as f:
      json.dump(result, f)
    return
  indices = (
    [int(i) for i in args.only.split(",")] if args.only else range(args.num)
  )
  for i in indices:  # bad --set values: one line, before any work
    config = mixture_config(i, args.set)
    try:
      defaults.validate(config)
      refine.settings(config)
    except ValueError as e:
      raise SystemExit(f"--set: {e}") from None
  if args.results:
    with open(args.results) as f:
      results = json.load(f)
    command = results_command(results)
    factors = sorted(
      int(k.removeprefix("refine_x"))
      for k in results[0]["runs"]
      if k.startswith("refine_x")
    )
  else:
    results = run_all(indices, factors, args.jobs, args.set)
    command = "python benchmarks/mixture_sweep.py " + " ".join(sys.argv[1:])
    for r in results:
      r["command"] = command.strip()
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f)
  text = table(results, factors, command.strip())
  print(text)
  if args.write:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import demo  # noqa: PLC0415

    demo.write_section(ROOT / "docs" / "BENCHMARKS.md", text, BEGIN, END)
    plot(results, factors, ROOT / "docs" / "mixture_sweep.png")


if __name__ == "__main__":
  main()
