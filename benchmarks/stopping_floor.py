"""Goal 2's floor: the fewest gradient evaluations per image that any stopping rule could reach
with the adaptive rule's choice of where to evaluate, at captum's accuracy.

The adaptive rule does two things: it picks which intervals of a path to bisect next (the
refinement order) and it decides when a path is done (the stopping rule). This separates them.
Spending exactly k intervals (``steps: k``) stops every path at the k-interval state of the same
refinement order, so running every k from the first round's 4 to ``--max-intervals`` gives each
held-out digit's true errors (against a 1,024-step Gauss-Legendre reference) after every
evaluation it could make. A path's flat ends (adaptive.PathEnds) are no evaluation in any state.
The configured rule's last round may bisect fewer than its share (adaptive._fewest_enough) and so
stop between two states; the check line says how many paths did.
A stopping rule picks one k per path; the best possible pick, knowing the true errors, is a
knapsack problem whose Lagrangian dual gives a lower bound:

    min mean_p (k_p + 1)  s.t.  mean_p err_j(p, k_p) <= captum's err_j  (j: completeness, max pixel, L2)
      >=  max over lambda >= 0 of  mean_p min_k [k + 1 + sum_j lambda_j err_j(p, k)] - sum_j lambda_j captum_j

A rule may also stop past the last state measured; such a stop costs at least one evaluation
more than the last state and has errors of at least 0, which is how those stops enter the bound:
it holds for every stopping rule, not only those that stop within ``--max-intervals``.

Printed: captum's errors, the configured rule (its own stopping), the bound, and what the picks
at the bound's multipliers reach (stopping by the true errors, which no rule knows). If the bound is above goal 2's 20
evaluations, no stopping rule can meet goal 2 with this refinement order: only where the rule
evaluates can. ``--variant`` measures the same for config overrides (a map_tolerance changes
how the two errors are weighed when ranking intervals, so it changes the refinement order).
Needs scikit-learn and scipy (the test and train extras).

    python benchmarks/stopping_floor.py [--images 360] [--max-intervals 40] [--variant "map_tolerance=0.16" ...]
        [--initial-intervals 4] [--refine-share 0.34]
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from comparison import input_errors
from end_to_end import CONFIG, captum_loop, reference_maps
from evaluations import write_held_out
from scipy.optimize import minimize
from variants import overrides

from igcli.attribution import adaptive
from igcli.attribution.engine import TargetSpec, attribute
from igcli.backends.loading import load_module
from igcli.config import load_config
from igcli.data.discover import discover_inputs
from igcli.pipeline.image_job import ImageJob

GOAL_EVALUATIONS = 20  # goal 2: 0.4x captum's 50


def path_errors(job: ImageJob, xs: torch.Tensor, quadrature, reference: list[tuple[np.ndarray, float]]):
    """Gradient evaluations [P] and true errors [3, P] of every held-out digit's explanation."""
    explanations = attribute(job.backend, xs, torch.full_like(xs, -1.0)[:, None], TargetSpec("predicted"),
                           quadrature, batch_size=job.config.batch_size)
    evals = np.array([e.gradient_evals for e in explanations], dtype=float)
    errors = np.array([input_errors(e.attributions.numpy(), *ref) for e, ref in zip(explanations, reference)])
    return evals, errors.T


def stopping_floor(evals: np.ndarray, errors: np.ndarray, target: np.ndarray) -> tuple[float, float, np.ndarray]:
    """For evaluations [K, P] and errors [3, K, P] of each path's K states: the dual bound, and the
    mean evaluations and errors of the picks at the bound's multipliers (among the K states)."""
    # Any stop past the last state: at least one evaluation more, errors at least 0.
    beyond = evals.max(0) + 1

    def dual(lam: np.ndarray) -> float:
        best = np.minimum((evals + np.tensordot(lam, errors, 1)).min(0), beyond)
        return float(best.mean() - lam @ target)

    # Every lambda gives a valid bound; the search only tightens it. Log-space keeps lambda >= 0.
    starts = [np.log([300.0, 40.0, 600.0]), np.log([30.0, 30.0, 30.0]), np.log([1000.0, 10.0, 100.0])]
    found = [minimize(lambda t: -dual(np.exp(t)), start, method="Nelder-Mead",
                      options={"maxiter": 4000, "xatol": 1e-4, "fatol": 1e-6}) for start in starts]
    lam = np.exp(min(found, key=lambda r: r.fun).x)
    picks = (evals + np.tensordot(lam, errors, 1)).argmin(0)
    paths = np.arange(evals.shape[1])
    return dual(lam), float(evals[picks, paths].mean()), errors[:, picks, paths].mean(1)


def _check_states(evals: np.ndarray, errors: np.ndarray, state_evals: np.ndarray, state_errors: np.ndarray) -> None:
    """How many of the configured rule's own stops are among the states. A path whose last round
    bisected its whole share stops at a state (the same refinement order, stopped at a round's
    end); one whose last round bisected fewer (adaptive._fewest_enough) stops between states."""
    first = state_evals[0]  # a path's states add one evaluation each; its flat ends none
    row = (evals - first).astype(int)
    paths = np.flatnonzero((row >= 0) & (row < len(state_evals)))
    if len(paths) == 0:
        print(f"| (check: none of the {len(evals)} paths stopped within the states; raise --max-intervals "
              "to compare) | | | | | |")
        return
    gap = np.abs(state_errors[:, row[paths], paths] - errors[:, paths]).max(0)
    same = int((gap <= 1e-6 * np.abs(errors[:, paths]).max(0) + 1e-12).sum())
    print(f"| (check: {len(paths)} of {len(evals)} paths stopped within the states; {same} of them at a state, "
          "with the same errors; the others in a last round that bisected fewer than its share) | | | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--max-intervals", type=int, default=40)
    parser.add_argument("--variant", action="append", default=[],
                        help="igcli config overrides to measure besides the config as it is (repeatable)")
    parser.add_argument("--initial-intervals", type=int, default=adaptive.INITIAL_INTERVALS,
                        help="intervals in the adaptive rule's first, uniform round (adaptive.INITIAL_INTERVALS)")
    parser.add_argument("--refine-share", type=float, default=adaptive.REFINE_SHARE,
                        help="share of a path's intervals bisected per round (adaptive.REFINE_SHARE)")
    args = parser.parse_args()
    if args.max_intervals < args.initial_intervals:
        parser.error(f"--max-intervals {args.max_intervals}: at least the first round's {args.initial_intervals}")
    adaptive.INITIAL_INTERVALS, adaptive.REFINE_SHARE = args.initial_intervals, args.refine_share

    def configured(variant: str) -> ImageJob:
        return ImageJob(load_config(CONFIG, [(t, "--set") for t in ["device=cpu", *overrides(variant)]]))

    job = configured("")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        write_held_out(scratch / "images", args.images)
        refs = list(discover_inputs([str(scratch / "images")], (".png",)))
        xs = torch.stack([next(job.read([ref])).x for ref in refs])
        by_name = reference_maps(job, scratch / "images")
        reference = [by_name[ref.path.name] for ref in refs]
        _, captum_maps = captum_loop(load_module(job.config.model.path, job.config.model.factory), job,
                                     scratch / "images", scratch / "captum")
    target = np.array([input_errors(captum_maps[ref.path.name], *by_name[ref.path.name]) for ref in refs]).mean(0)

    print(f"# {platform.machine()}, torch {torch.__version__}, {args.images} held-out digits, states of "
          f"{args.initial_intervals}..{args.max_intervals} intervals per path, first round {args.initial_intervals} "
          f"intervals, {args.refine_share:g} of a path's intervals bisected per round")
    print("| run | gradient evals/image | vs captum's 50 | completeness error | map error, max pixel | map error, L2 |")
    print("|---|---|---|---|---|---|")
    print("| captum (GL, 50 steps) | 50 | 1.00x | " + " | ".join(f"{v:.2e}" for v in target) + " |")
    for variant in ["", *args.variant]:
        job = configured(variant)
        name = variant or "as configured"
        evals, errors = path_errors(job, xs, job.quadrature, reference)
        print(f"| igcli ({name}), its own stopping | {evals.mean():.1f} | {evals.mean() / 50:.2f}x | "
              + " | ".join(f"{v:.2e}" for v in errors.mean(1)) + " |", flush=True)
        states = [path_errors(job, xs, dataclasses.replace(job.quadrature, steps=k), reference)
                  for k in range(args.initial_intervals, args.max_intervals + 1)]
        state_evals, state_errors = np.stack([s[0] for s in states]), np.stack([s[1] for s in states], axis=1)
        bound, oracle_evals, oracle_errors = stopping_floor(state_evals, state_errors, target)
        _check_states(evals, errors, state_evals, state_errors)
        print(f"| igcli ({name}), the floor for any stopping rule | **≥ {bound:.1f}** | {bound / 50:.2f}x | "
              "at most captum's | at most captum's | at most captum's |")
        print(f"| igcli ({name}), stopped by the true errors (the bound's picks) | {oracle_evals:.1f} | "
              f"{oracle_evals / 50:.2f}x | " + " | ".join(f"{v:.2e}" for v in oracle_errors) + " |", flush=True)
    print(f"\nGoal 2 asks for at most {GOAL_EVALUATIONS} evaluations per image at captum's accuracy.")


if __name__ == "__main__":
    main()
