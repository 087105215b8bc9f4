"""Suite-wide settings: the suite runs offline, like every user without hub access."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Dry runs read the stored step costs instead of timing cells (tests/test_measure.py times them).
os.environ.setdefault("GENTRON_MEASURE", "0")

from tests.support.slurm_fixtures import slurm_cluster  # noqa: E402,F401  (session fixture: the local one-node SLURM)
