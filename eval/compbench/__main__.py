"""`python -m eval.compbench SAMPLES_DIR [...]` scores; `python -m eval.compbench plan ...` writes the plan."""
from __future__ import annotations

import argparse
import sys

from eval import weights
from eval.common import run_cli
from eval.compbench.prompts import CATEGORIES, IMAGES_PER_PROMPT, generation_plan, write_plan
from eval.compbench.run import evaluate
from eval.compbench.spatial import CONFIDENCE
from eval.compbench.vqa import IMAGE_SIZE
from gentron.errors import exits_on_user_error, positive_int


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", choices=CATEGORIES, default=None,
                        help="score only this category; required for a folder in the official layout")
    parser.add_argument("--blip", default=weights.BLIP_VQA, help="BLIP-VQA folder or cached hub name")
    parser.add_argument("--detector", default=weights.OWLVIT, help="OWL-ViT/OWLv2 folder or cached hub name")
    parser.add_argument("--clip", default=weights.CLIP_B32, help="CLIP: transformers folder/hub name or open_clip name")
    parser.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
    parser.add_argument("--checkout", default=None, help="T2I-CompBench checkout (or its examples/dataset): prompt ids "
                        "= prompt-file lines; the complex sub-split files (needed for complex)")
    parser.add_argument("--official-dir", default=None, help="default SAMPLES_DIR/eval/compbench_official")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--detector-confidence", type=float, default=CONFIDENCE)
    parser.add_argument("--vqa-image-size", type=positive_int, default=IMAGE_SIZE)


def _plan(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.compbench plan")
    parser.add_argument("--checkout", required=True, help="T2I-CompBench checkout (examples/dataset/*_val.txt)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES))
    parser.add_argument("--images-per-prompt", type=positive_int, default=IMAGES_PER_PROMPT)
    args = parser.parse_args(argv)
    rows = generation_plan(args.checkout, args.categories, args.images_per_prompt)
    print(f"{len(rows)} images -> {write_plan(rows, args.out)}")


@exits_on_user_error("python -m eval.compbench")
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:
        _plan(argv[1:])
    else:
        run_cli("compbench", evaluate, _add_arguments, argv)


if __name__ == "__main__":
    main()
