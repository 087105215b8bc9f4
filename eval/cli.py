"""`gentron-eval <metric> ...`: one command for every evaluator's command line, the same as
`python -m eval.<metric> ...` (same arguments, output and exit status)."""
from __future__ import annotations

import importlib
import sys

PROG = "gentron-eval"
# metric -> (the module whose main() is `python -m eval.<metric>`, what it does)
EVALUATORS = {
    "judge": ("eval.judge", "CompShapes judge: exact colour / shape / texture / position scores"),
    "compbench": ("eval.compbench.__main__", "T2I-CompBench (`gentron-eval compbench plan ...` writes the plan)"),
    "fid": ("eval.fid", "FID / KID with clean-fid (subcommands make-stats, shard)"),
    "clip_score": ("eval.clip_score", "CLIP score (torchmetrics' formula) and the raw cosine"),
    "coco": ("eval.coco", "COCO-30K captions and references: plan, shard, refs"),
    "geneval": ("eval.geneval.__main__", "GenEval: Mask2Former detections, CLIP colours, the official rules"),
    "vbench": ("eval.vbench.__main__", "VBench video dimensions: flickering, subject / background consistency, "
                                       "dynamic degree"),
    "fvd": ("eval.fvd", "FVD: Fréchet distance on I3D features of clips (subcommand make-stats)"),
}


def usage() -> str:
    lines = [f"usage: {PROG} <metric> [arguments ...]", "",
             "Score a sample folder (DESIGN.md) with one evaluator; `<metric> --help` lists its arguments.", "",
             "metrics:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in EVALUATORS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in EVALUATORS:
        given = f"unknown metric '{argv[0]}'" if argv else "no metric given"
        print(f"{PROG}: error: {given}; give one of {', '.join(EVALUATORS)} (see {PROG} --help)", file=sys.stderr)
        return 2
    module, _ = EVALUATORS[argv[0]]
    importlib.import_module(module).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
