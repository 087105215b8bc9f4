"""A real one-node SLURM cluster on this machine, for the tests and for laptops. From the checkout:

    python -m tests.support.cluster install  # apt-get install slurm-wlm munge (when missing)
    python -m tests.support.cluster start    # munge key + munged, /etc/slurm/slurm.conf, slurmctld, slurmd
    python -m tests.support.cluster status
    python -m tests.support.cluster stop     # stops slurmctld and slurmd (munged is left running)

Needs root and the Debian packages `slurm-wlm` and `munge`. The config is written to the default
path /etc/slurm/slurm.conf so that every client (sbatch, squeue, scontrol, submitit's calls, jobs)
finds it without SLURM_CONF in its environment. A slurm.conf we did not write is never touched.
There is no accounting database: `sacct` does not work here, and `slurm.launcher` reads job states
from squeue/scontrol instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gentron.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger("tests.support.cluster")  # its name under `python -m` too

CONF_PATH = Path("/etc/slurm/slurm.conf")
MARKER = "# Written by gentron's one-node test cluster (tests/support/cluster.py)."
# Every marker this file has written starts so: a config written by an older checkout is still ours.
OURS = "# Written by gentron's "
STATE_DIR = Path("/var/lib/gentron-slurm")
LOG_DIR = Path("/var/log/gentron-slurm")
RUN_DIR = Path("/run/gentron-slurm")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID = Path("/run/munge/munged.pid")
INSTALL_HINT = "install them with `apt-get install -y slurm-wlm munge` (as root)"
REQUIRED_PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
PARTITION = "debug"


class ClusterError(RuntimeError):
    """The local cluster cannot be set up or started; the message says why and what to do."""


def missing_programs() -> list[str]:
    return [p for p in REQUIRED_PROGRAMS if not _which(p)]


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")


def install_packages() -> None:
    """apt-get install the Debian packages (root only); ClusterError when that fails."""
    if os.geteuid() != 0:
        raise ClusterError(f"not root: cannot install the SLURM packages; {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")


def check_can_run() -> None:
    """Raise ClusterError naming the fix when this machine cannot host the local cluster."""
    if os.geteuid() != 0:
        raise ClusterError("the local SLURM cluster must be started as root (munged, slurmd)")
    missing = missing_programs()
    if missing:
        raise ClusterError(f"missing programs {', '.join(missing)}: {INSTALL_HINT}")
    if CONF_PATH.exists() and not CONF_PATH.read_text().startswith(OURS):
        raise ClusterError(
            f"{CONF_PATH} exists and was not written by tests/support/cluster.py: this machine has its own "
            "SLURM; use it directly (profile 'example') instead of the local test cluster"
        )


def _run(cmd: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = [_which(cmd[0]) or cmd[0], *cmd[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# ---- munge -------------------------------------------------------------------------------------

def ensure_munge_key() -> None:
    munge_user = pwd.getpwnam("munge")
    if not MUNGE_KEY.exists():
        log.info("creating munge key %s", MUNGE_KEY)
        MUNGE_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(MUNGE_KEY, os.urandom(1024))
    os.chown(MUNGE_KEY.parent, munge_user.pw_uid, munge_user.pw_gid)
    os.chmod(MUNGE_KEY.parent, 0o700)
    os.chown(MUNGE_KEY, munge_user.pw_uid, munge_user.pw_gid)
    os.chmod(MUNGE_KEY, 0o400)


def munge_works() -> bool:
    encode = subprocess.run([_which("munge"), "-n"], capture_output=True, timeout=10)
    if encode.returncode != 0:
        return False
    decode = subprocess.run([_which("unmunge")], input=encode.stdout, capture_output=True, timeout=10)
    return decode.returncode == 0


def start_munge() -> None:
    if munge_works():
        return
    ensure_munge_key()
    munge_user = pwd.getpwnam("munge")
    for d in (Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, munge_user.pw_uid, munge_user.pw_gid)
    log.info("starting munged")
    _run(["runuser", "-u", "munge", "--", _which("munged"), "--force"])
    _wait_for(munge_works, 15, "munged did not start; see /var/log/munge/munged.log")


# ---- slurm.conf --------------------------------------------------------------------------------

def node_resources() -> dict[str, str]:
    """The node line slurmd itself reports (`slurmd -C`): NodeName, CPUs, sockets, memory."""
    first = _run(["slurmd", "-C"]).stdout.splitlines()[0]
    fields = dict(item.split("=", 1) for item in first.split())
    if "NodeName" not in fields or "RealMemory" not in fields:
        raise ClusterError(f"cannot read the node's resources from `slurmd -C`: {first!r}")
    return fields


def render_conf(node: dict[str, str]) -> str:
    host = node["NodeName"]
    hardware = " ".join(f"{k}={v}" for k, v in node.items() if k != "NodeName")
    return f"""{MARKER}
# `python -m tests.support.cluster stop` stops it; delete this file to let a real SLURM config take its place.
ClusterName=gentron-local
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=5
StateSaveLocation={STATE_DIR}/slurmctld
SlurmdSpoolDir={STATE_DIR}/slurmd
SlurmctldPidFile={RUN_DIR}/slurmctld.pid
SlurmdPidFile={RUN_DIR}/slurmd.pid
SlurmctldLogFile={LOG_DIR}/slurmctld.log
SlurmdLogFile={LOG_DIR}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
# A job whose afterok dependency failed is cancelled instead of pending forever.
DependencyParameters=kill_invalid_depend
# No accounting database: sacct does not work; job states come from squeue/scontrol.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
MinJobAge=600
KillWait=2
InactiveLimit=0
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
NodeName={host} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def write_conf() -> bool:
    """Write /etc/slurm/slurm.conf; True when its content changed."""
    text = render_conf(node_resources())
    if CONF_PATH.exists() and CONF_PATH.read_text() == text:
        return False
    log.info("writing %s", CONF_PATH)
    atomic_write_text(CONF_PATH, text)
    os.chmod(CONF_PATH, 0o644)
    return True


# ---- daemons -----------------------------------------------------------------------------------

def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def daemon_pids() -> dict[str, int | None]:
    return {name: _pid_alive(RUN_DIR / f"{name}.pid") for name in ("slurmctld", "slurmd")}


def controller_up() -> bool:
    proc = _run(["scontrol", "ping"], check=False)
    return proc.returncode == 0 and "UP" in proc.stdout


def node_state() -> str:
    """The node's state as sinfo prints it (idle, mixed, alloc, down*, drain, ...), '' if unknown."""
    proc = _run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""


def start_daemons() -> None:
    for d in (STATE_DIR / "slurmctld", STATE_DIR / "slurmd", LOG_DIR, RUN_DIR):
        d.mkdir(parents=True, exist_ok=True)
    pids = daemon_pids()
    if pids["slurmctld"] is None:
        log.info("starting slurmctld")
        _run(["slurmctld"])
        _wait_for(controller_up, 30, f"slurmctld did not come up; see {LOG_DIR}/slurmctld.log")
    if pids["slurmd"] is None:
        log.info("starting slurmd")
        _run(["slurmd"])


def wait_node_ready(timeout: float = 60) -> None:
    """Wait for the node to accept jobs, resuming it once if a previous run left it down/drained."""
    resumed = False

    def ready() -> bool:
        nonlocal resumed
        state = node_state()
        if state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing"):
            return True
        if not resumed and state.startswith(("down", "drain")):
            host = node_resources()["NodeName"]
            _run(["scontrol", "update", f"nodename={host}", "state=resume"], check=False)
            resumed = True
        return False

    _wait_for(ready, timeout, f"the node did not become idle (state {node_state()!r}); see {LOG_DIR}")


def _wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise ClusterError(message)


def _stop_daemon(name: str) -> None:
    pid = _pid_alive(RUN_DIR / f"{name}.pid")
    if pid is None:
        return
    log.info("stopping %s (pid %d)", name, pid)
    os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: _pid_alive(RUN_DIR / f"{name}.pid") != pid, 30, f"{name} (pid {pid}) did not stop")


# ---- commands ----------------------------------------------------------------------------------

def start() -> None:
    """Start the one-node cluster (idempotent) and wait until its node accepts jobs."""
    check_can_run()
    start_munge()
    if write_conf() and any(daemon_pids().values()):
        log.info("slurm.conf changed: restarting the daemons")
        stop()
    start_daemons()
    wait_node_ready()
    log.info("local SLURM cluster up: partition %r, node %s", PARTITION, node_state())


def stop() -> None:
    """Stop slurmd and slurmctld (idempotent); queued jobs survive in the state directory."""
    _stop_daemon("slurmd")
    _stop_daemon("slurmctld")


def status() -> dict:
    pids = daemon_pids()
    up = pids["slurmctld"] is not None and controller_up()
    return {"config": str(CONF_PATH) if CONF_PATH.exists() else None, **pids,
            "controller_up": up, "node_state": node_state() if up else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["install", "start", "stop", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "install":
            if missing_programs():
                install_packages()
        elif args.command == "start":
            start()
        elif args.command == "stop":
            check_can_run()
            stop()
        else:
            for key, value in status().items():
                print(f"{key}: {value}")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
