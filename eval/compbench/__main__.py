"""`python -m eval.compbench SAMPLES_DIR [...]` scores; `python -m eval.compbench plan ...` writes the plan."""
from __future__ import annotations

import argparse
import sys

from eval import weights
from eval.arguments import OneLineParser, device_name, existing_folder, non_empty, output_folder, probability
from eval.common import run_cli
from eval.compbench.prompts import CATEGORIES, IMAGES_PER_PROMPT, generation_plan, write_plan
from eval.compbench.run import evaluate, merge
from eval.compbench.spatial import CONFIDENCE
from eval.compbench.vqa import IMAGE_SIZE
from gentron.errors import exits_on_user_error, positive_int

CHECKOUT = "a T2I-CompBench checkout (git clone https://github.com/Karine-Huang/T2I-CompBench) or its examples/dataset"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", choices=CATEGORIES, default=None,
                        help="score only this category; required for a folder in the official layout")
    parser.add_argument("--blip", default=weights.BLIP_VQA, type=non_empty(f"a BLIP-VQA folder or cached hub name "
                                                                         f"(default {weights.BLIP_VQA})"),
                        help="BLIP-VQA folder or cached hub name")
    parser.add_argument("--detector", default=weights.OWLVIT, type=non_empty(f"an OWL-ViT/OWLv2 folder or cached hub "
                                                                             f"name (default {weights.OWLVIT})"),
                        help="OWL-ViT/OWLv2 folder or cached hub name")
    parser.add_argument("--clip", default=weights.CLIP_B32, type=non_empty(f"a CLIP folder or hub name (default "
                                                                           f"{weights.CLIP_B32}) or an open_clip name"),
                        help="CLIP: transformers folder/hub name or open_clip name")
    parser.add_argument("--clip-pretrained", default=None,
                        type=non_empty("an open_clip pretrained tag such as openai or a checkpoint file, or leave it out"),
                        help="open_clip pretrained tag or checkpoint file")
    parser.add_argument("--checkout", default=None, type=existing_folder(CHECKOUT),
                        help="T2I-CompBench checkout (or its examples/dataset): prompt ids "
                        "= prompt-file lines; the complex sub-split files (needed for complex)")
    parser.add_argument("--official-dir", default=None,
                        type=output_folder("a folder for the official result files, or leave it out"),
                        help="default SAMPLES_DIR/eval/compbench_official")
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--detector-confidence", type=probability, default=CONFIDENCE,
                        help=f"detector score threshold in [0, 1] (default {CONFIDENCE})")
    parser.add_argument("--vqa-image-size", type=positive_int, default=IMAGE_SIZE)


def _plan(argv: list[str]) -> None:
    parser = OneLineParser(prog="python -m eval.compbench plan")
    parser.add_argument("--checkout", required=True, type=existing_folder(CHECKOUT),
                        help="T2I-CompBench checkout (examples/dataset/*_val.txt)")
    parser.add_argument("--out", required=True, type=output_folder("a folder for plan.jsonl"))
    parser.add_argument("--categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES))
    parser.add_argument("--images-per-prompt", type=positive_int, default=IMAGES_PER_PROMPT)
    args = parser.parse_args(argv)
    if repeated := sorted({c for c in args.categories if args.categories.count(c) > 1}):
        parser.error(f"argument --categories: {', '.join(repeated)} given twice; every image would be planned twice")
    rows = generation_plan(args.checkout, args.categories, args.images_per_prompt)
    print(f"{len(rows)} images -> {write_plan(rows, args.out)}")


@exits_on_user_error("python -m eval.compbench")
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:
        _plan(argv[1:])
    else:
        run_cli("compbench", evaluate, _add_arguments, argv, merge)


if __name__ == "__main__":
    main()
