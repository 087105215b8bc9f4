"""The `slurm_cluster` session fixture: a real one-node SLURM on this machine (tests.support.cluster).

Wired into the suite by tests/conftest.py (`from tests.support.slurm_fixtures import slurm_cluster`). The cluster
is left running after the session: starting it again is a no-op, and other sessions may use it.
"""
from __future__ import annotations

import os

import pytest

from tests.support import cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """Start (or find) the local cluster; skip when not root or the packages cannot be installed."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM tests start a local cluster and need root (run `make test` as root)")
    if cluster.missing_programs():
        try:
            cluster.install_packages()
        except cluster.ClusterError as e:
            pytest.skip(f"SLURM packages not installable: {e}")
    try:
        cluster.check_can_run()
    except cluster.ClusterError as e:
        pytest.skip(f"cannot host the local SLURM cluster: {e}")
    try:
        cluster.start()
    except cluster.ClusterError as e:
        pytest.fail(f"the local SLURM cluster did not start: {e}")
    return cluster.status()
