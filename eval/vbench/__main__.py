"""`python -m eval.vbench SAMPLES_DIR [--dimensions ...] [--full-info FILE] [...]`: VBench dimensions of a
folder of clips."""
from __future__ import annotations

import argparse

from eval.arguments import device_name, non_empty
from eval.common import run_cli
from eval.vbench import dimensions, models
from eval.vbench.clips import SOURCES
from eval.vbench.run import evaluate, merge
from gentron.errors import exits_on_user_error


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dimensions", default=None,
                        type=non_empty(f"comma-separated dimensions among {','.join(dimensions.DIMENSIONS)}"),
                        help=f"comma-separated, default all of {','.join(dimensions.DIMENSIONS)}")
    parser.add_argument("--full-info", default=None,
                        type=non_empty("VBench's vbench/VBench_full_info.json, or leave it out"),
                        help="VBench_full_info.json: score each clip on the dimensions its prompt serves (VBench's "
                             "protocol); without it every clip is scored on every dimension")
    parser.add_argument("--dino", default=None, type=non_empty("a DINO ViT-B/16 folder or cached hub name"),
                        help=f"subject consistency model (default ${models.DINO_ENV}, else facebook/dino-vitb16)")
    parser.add_argument("--clip", default=None, type=non_empty("a CLIP ViT-B/32 folder or cached hub name"),
                        help=f"background consistency model (default ${models.CLIP_ENV}, else "
                             f"openai/clip-vit-base-patch32)")
    parser.add_argument("--raft", default=None, type=non_empty("a torchvision RAFT .pth file or weights name"),
                        help=f"dynamic degree flow model (default ${models.RAFT_ENV}, else C_T_V1 in torch hub's cache)")
    parser.add_argument("--source", default="frames", choices=SOURCES,
                        help="read a sample's PNG frames (default) or its encoded file, where it has both")
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:N or auto (default)")


@exits_on_user_error("python -m eval.vbench")
def main(argv: list[str] | None = None) -> None:
    run_cli("vbench", evaluate, _add_arguments, argv, merge)


if __name__ == "__main__":
    main()
