"""Start the results browser or the voting app as a subprocess on 127.0.0.1 and wait until it
answers: for the screenshots, the benchmarks and the browser tests, which all drive the real apps."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

REPO = Path(__file__).resolve().parents[1]
# Debian's Chromium, driven through Playwright (a downloaded browser is never used)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(command: list[str], url: str, ready_path: str, timeout: float = 60.0, repo: Path = REPO):
    """Run a server process in `repo` until `url + ready_path` answers; always stop it (by its own pid)."""
    process = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stdout.read().decode(errors='replace')}")
            try:
                with urlopen(url + ready_path, timeout=2):
                    break
            except HTTPError as e:
                if e.code < 500:  # it answers, if not with a page at this path
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command} did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def results_browser(runs: Path, port: int | None = None, timeout: float = 90.0, repo: Path = REPO):
    """`streamlit run reports/app.py -- --runs RUNS`, headless, until the block ends; `repo`: the
    checkout whose app is served (`python -m` puts its folder first on the import path)."""
    port = port or free_port()
    return serve([sys.executable, "-m", "streamlit", "run", "reports/app.py", "--server.port", str(port),
                  "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
                  "--server.fileWatcherType", "none", "--", "--runs", str(runs)],
                 f"http://127.0.0.1:{port}", "/_stcore/health", timeout, repo)


def vote_app(db: Path, port: int | None = None, timeout: float = 60.0):
    """`python reports/vote.py --db DB` until the block ends."""
    port = port or free_port()
    return serve([sys.executable, "reports/vote.py", "--db", str(db), "--port", str(port)],
                 f"http://127.0.0.1:{port}", "/", timeout)
