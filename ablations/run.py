"""Run an ablation grid: `python ablations/run.py grid=conditioning [key=value ...]` (see ablations/launch.py)."""
import sys

from ablations.launch import main

if __name__ == "__main__":
    sys.exit(main())
