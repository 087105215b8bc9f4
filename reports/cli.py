"""The installed commands of the reports: `gentron-browse` (the results browser) and `gentron-vote`
(the blind voting app), the same as `streamlit run reports/app.py -- --runs RUNS` and `python reports/vote.py`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def browse(argv: list[str] | None = None) -> int:
    """Replace this process with `streamlit run reports/app.py [STREAMLIT OPTIONS] -- [--runs RUNS]`."""
    parser = argparse.ArgumentParser(
        prog="gentron-browse", allow_abbrev=False,
        description="The results browser: `streamlit run reports/app.py -- --runs RUNS` (see reports/browser.py).",
        epilog="Any other option goes to `streamlit run`, e.g. --server.port 8501 --server.headless true.")
    parser.add_argument("--runs", help="the runs folder (default $GENTRON_RUNS, else runs/)")
    args, streamlit_options = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    # the settings of the checkout's .streamlit/config.toml, which Streamlit reads only when started in the checkout
    defaults = ["--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    command = [sys.executable, "-m", "streamlit", "run", str(APP), *defaults, *streamlit_options, "--"]
    if args.runs is not None:
        command += ["--runs", args.runs]
    os.execv(sys.executable, command)  # Streamlit owns the process from here: Ctrl-C stops it directly


def vote(argv: list[str] | None = None) -> int:
    """`python reports/vote.py ...` under its installed name."""
    from reports.voteapp import main

    return main(argv, prog="gentron-vote")
