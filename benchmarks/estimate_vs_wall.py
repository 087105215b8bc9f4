"""How well the dry run's time estimate predicts a grid's wall time on this machine.

    python benchmarks/estimate_vs_wall.py [grid=conditioning] [runs_dir=DIR] [other grid overrides] [--out FILE]

1. The dry run's estimate, as `python ablations/run.py grid=... dry_run=true` computes it: this
   machine's step costs measured (ablations.measure; cached per machine and code version), packed onto
   the local workers, at the load average of the moment.
2. The grid itself, run from scratch by `python ablations/run.py` in a fresh runs folder (a temporary
   one unless runs_dir= is given; it must not hold the grid yet), timed by the wall clock.
3. One line: the estimate (idle and at the load), the wall time, and wall / estimate, with the load
   average before and after. Meaningful on an idle machine: with other work running, both the load
   and the wall time move while the grid runs.

The result goes to --out as JSON too (default: none).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("args", nargs="*", help="grid=<name> (default conditioning), runs_dir=..., overrides")
    parser.add_argument("--out", help="write the numbers to this JSON file as well")
    args = parser.parse_args()

    from ablations import costs, measure
    from ablations.grid import plan

    argv = list(args.args)
    if not any(a.startswith("grid=") for a in argv):
        argv.insert(0, "grid=conditioning")
    runs_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("runs_dir=")), None)
    if runs_dir is None:
        runs_dir = tempfile.mkdtemp(prefix="gentron-estimate-")
        argv.append(f"runs_dir={runs_dir}")
    p = plan(argv)
    if p.grid_dir.exists():
        print(f"{p.grid_dir} exists: give a runs_dir= that does not hold grid '{p.grid.name}' yet", file=sys.stderr)
        return 2

    started = time.perf_counter()
    table = measure.plan_costs(p)
    dry_run_s = time.perf_counter() - started
    e = costs.estimate(p, table)
    load_before, share = os.getloadavg()[0], measure.core_share()
    factor = measure.load_factor(e["workers"], table["cores"], measure.competing(table["cores"], load_before, share))
    print(measure.format_estimate(p, table, load_before, share), flush=True)

    command = [sys.executable, str(REPO / "ablations" / "run.py"), *argv]
    print(f"running: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    rc = subprocess.run(command, cwd=REPO).returncode
    wall_s = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    result = {"grid": p.grid.name, "args": argv, "machine": table["machine"], "workers": e["workers"],
              "measuring_s": round(dry_run_s, 1), "estimate_idle_s": round(e["total_s"], 1),
              "estimate_at_load_s": round(e["total_s"] * factor, 1), "load_before": round(load_before, 2), "core_share_before": round(share, 2),
              "load_after": round(load_after, 2), "wall_s": round(wall_s, 1), "returncode": rc,
              "wall_over_estimate": round(wall_s / (e["total_s"] * factor), 3) if e["total_s"] else None,
              "missing": e["missing"]}
    print(f"grid {p.grid.name} on {table['machine']}, {e['workers']} workers: estimate {e['total_s'] / 60:.1f} min idle, "
          f"{e['total_s'] * factor / 60:.1f} min at load {load_before:.1f}; wall {wall_s / 60:.1f} min "
          f"(load {load_after:.1f} at the end); wall / estimate = {result['wall_over_estimate']}"
          + ("" if rc == 0 else f"; the grid exited {rc}") + f"; measuring took {dry_run_s:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
