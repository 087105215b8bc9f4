"""`python -m eval.geneval SAMPLES_DIR [--metadata FILE] [...]`: GenEval scores of a sample folder."""
from __future__ import annotations

import argparse

from eval.arguments import device_name, non_empty, output_file, probability, whole_number
from eval.common import run_cli
from eval.geneval import colors, detector, prompts
from eval.geneval.rules import Settings
from eval.geneval.run import evaluate
from gentron.errors import exits_on_user_error


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--metadata", default=None,
                        type=non_empty("the official prompts/evaluation_metadata.jsonl, or leave it out for a folder "
                                       "in the official layout"),
                        help="the official prompts/evaluation_metadata.jsonl (needed for a gentron sample folder)")
    parser.add_argument("--detector", default=None,
                        type=non_empty(f"a Mask2Former folder or cached hub name (default ${detector.DETECTOR_ENV} or "
                                       f"{detector.DEFAULT_DETECTOR})"),
                        help=f"Mask2Former COCO instance model: folder or cached hub name (default "
                             f"${detector.DETECTOR_ENV}, else {detector.DEFAULT_DETECTOR})")
    parser.add_argument("--clip-model", default=colors.DEFAULT_MODEL,
                        type=non_empty(f"an open_clip model name or local-dir:FOLDER (default {colors.DEFAULT_MODEL})"),
                        help=f"colour classifier: open_clip model name or local-dir:FOLDER (default {colors.DEFAULT_MODEL})")
    parser.add_argument("--clip-pretrained", default=None,
                        type=non_empty("an open_clip pretrained tag such as openai or a checkpoint file"),
                        help=f"open_clip pretrained tag or checkpoint file (default for {colors.DEFAULT_MODEL}: "
                             f"${colors.WEIGHTS_ENV}, else {colors.DEFAULT_PRETRAINED}; a local-dir: folder's own)")
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--threshold", type=probability, default=defaults.threshold,
                        help=f"detection confidence threshold (official {defaults.threshold})")
    parser.add_argument("--counting-threshold", type=probability, default=defaults.counting_threshold,
                        help=f"threshold for counting prompts (official {defaults.counting_threshold})")
    parser.add_argument("--max-objects", type=whole_number(1), default=defaults.max_objects,
                        help=f"detections kept per class (official {defaults.max_objects})")
    parser.add_argument("--max-overlap", type=probability, default=defaults.max_overlap,
                        help=f"IoU at which a less confident box is suppressed; 1 = no suppression (official "
                             f"{defaults.max_overlap})")
    parser.add_argument("--position-threshold", type=probability, default=defaults.position_threshold,
                        help=f"relative-position margin (official {defaults.position_threshold})")
    parser.add_argument("--background", default=colors.BACKGROUND,
                        type=non_empty("a colour such as #999, or original"),
                        help=f"colour outside an object's mask in its colour crop, or 'original' (official "
                             f"{colors.BACKGROUND})")
    parser.add_argument("--no-crop", dest="crop", action="store_false",
                        help="classify colours on the whole masked image instead of the box crop")
    parser.add_argument("--images-per-prompt", type=whole_number(0), default=prompts.IMAGES_PER_PROMPT,
                        help=f"images every prompt must have (official {prompts.IMAGES_PER_PROMPT}); 0: any number")
    parser.add_argument("--official-results", default=None,
                        type=output_file("a file for the official results.jsonl, or leave it out"),
                        help="where to write the official results.jsonl (default SAMPLES_DIR/eval/geneval_results.jsonl)")


@exits_on_user_error("python -m eval.geneval")
def main(argv: list[str] | None = None) -> None:
    run_cli("geneval", evaluate, _add_arguments, argv)


if __name__ == "__main__":
    main()
