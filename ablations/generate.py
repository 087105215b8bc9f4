"""Sample a diffusers pipeline into a standard sample folder, as a trained cell samples (eval.baseline).

    python -m ablations.generate --pipeline PixArt-alpha/PixArt-XL-2-512x512 --prompt-set t2i_compbench_val \
        --out samples/pixart --steps 20 --guidance 4.5 [--scheduler DPMSolverMultistepScheduler] \
        [--dtype auto|float32|float16|bfloat16] [--resolution 512] [--config runs/g/<cell>/config.yaml] \
        [--seeds 42 43] [--images-per-prompt 1] [--batch-size 16] [--shard k/K] [--noise seed|per_prompt]
    python -m ablations.generate --out samples/pixart --merge      # samples.jsonl once every shard is drawn

--prompt-set is any set of ablations/conf/prompt_sets.yaml (CompShapes sets, t2i_compbench_val, coco30k,
geneval), --prompts a prompt file (.txt or .jsonl, gentron.generate.read_prompt_file). Seeds, images per
prompt, batch size and resolution default to a cell config's (--config, e.g. the trained cell the baseline
is compared with; else gentron's defaults), so the folder holds the same prompt ids, seeds and file
names as that cell's; the flags override them. The noise rule defaults to the prompt set's (`noise:` in
the registry: per_prompt for COCO-30K). Scoring is the evaluators' as for any sample folder:
`gentron-eval <metric> DIR ...` (judge, compbench, fid, clip_score, geneval).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ablations.registries import registry
from ablations.prompt_sets import prompt_records
from eval.baseline import DTYPES, generate_pipeline, load_baseline
from gentron.config import default_config, load_config
from gentron.errors import exits_on_user_error
from gentron.generate import NOISES, merge_shards, read_prompt_file

PROG = "python -m ablations.generate"


def option(text: str) -> tuple[str, object]:
    """KEY=VALUE of --option, the value read as YAML (true, 0.5, [1, 2], text)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. clean_caption=false)")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="a diffusers pipeline folder or a hub name in the Hugging Face cache")
    parser.add_argument("--out", required=True, help="the sample folder to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--prompt-set", help="a prompt set of ablations/conf/prompt_sets.yaml")
    group.add_argument("--prompts", type=Path, help=".txt (one prompt per line) or .jsonl of records")
    parser.add_argument("--steps", type=int, default=20, help="inference steps (default 20)")
    parser.add_argument("--guidance", type=float, default=4.5, help="classifier-free guidance scale (default 4.5)")
    parser.add_argument("--scheduler", default=None, help="a diffusers scheduler class (default: the pipeline's own)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: float16 on CUDA, else float32")
    parser.add_argument("--resolution", type=int, default=None, help="pixels per side (default: the config's)")
    parser.add_argument("--negative-prompt", default=None, help="default: the pipeline's own unconditional prompt")
    parser.add_argument("--option", type=option, action="append", default=[], metavar="KEY=VALUE",
                        help="a further keyword argument of the pipeline's call (repeatable)")
    parser.add_argument("--config", default=None, help="a cell config whose sample seeds, images per prompt, batch "
                                                       "size and data.resolution to use (default: gentron's defaults)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="sampling seeds (default: the config's)")
    parser.add_argument("--images-per-prompt", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--shard", default=None, help="k/K: draw shard k of K (e.g. 0/8), resuming where it stopped")
    parser.add_argument("--noise", default=None, choices=NOISES, help="default: the prompt set's rule (else seed)")
    parser.add_argument("--merge", action="store_true", help="only merge the shards' parts into samples.jsonl")
    return parser


@exits_on_user_error(PROG)
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.merge:
        print(merge_shards(args.out))
        return
    if not args.pipeline or not (args.prompt_set or args.prompts):
        raise ValueError("give --pipeline (a diffusers folder or hub name) and --prompt-set NAME or --prompts FILE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config) if args.config else default_config()
    sample = dataclasses.replace(cfg.sample, **{k: v for k, v in {
        "seeds": args.seeds, "images_per_prompt": args.images_per_prompt,
        "batch_size": args.batch_size}.items() if v is not None})
    if sample.images_per_prompt < 1 or sample.batch_size < 1 or not sample.seeds or min(sample.seeds) < 0:
        raise ValueError("--images-per-prompt and --batch-size must be at least 1, --seeds non-negative")
    spec = load_baseline({"pipeline": args.pipeline, "steps": args.steps, "guidance": args.guidance,
                          "scheduler": args.scheduler, "dtype": args.dtype, "resolution": args.resolution,
                          "negative_prompt": args.negative_prompt, "options": dict(args.option)}, "")
    if args.prompts:
        records, noise = read_prompt_file(args.prompts, sample.seeds, sample.images_per_prompt), "seed"
    else:
        sets = registry("prompt_sets")
        if args.prompt_set not in sets:
            raise ValueError(f"unknown prompt set {args.prompt_set!r}; known: {', '.join(sets)} "
                             "(ablations/conf/prompt_sets.yaml), or pass --prompts FILE")
        records, noise = prompt_records(args.prompt_set, sample), sets[args.prompt_set].get("noise", "seed")
    print(generate_pipeline(spec, records, args.out, resolution=cfg.data.resolution, batch_size=sample.batch_size,
                            shard=args.shard, noise=args.noise or noise))


if __name__ == "__main__":
    main()
