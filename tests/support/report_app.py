"""What the AppTest suites of the results browser share (tests/test_reports_app.py,
tests/test_reports_app_grids.py): the page under test, run folders built to DESIGN.md's contract, and
readers of what the page drew (tables, charts' specs and data, LaTeX checked without LaTeX)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from tests.support.report_fixtures import build_grid

APP = str(Path(__file__).resolve().parents[2] / "reports" / "page.py")  # the page that reports/app.py serves

CI_CELL = re.compile(r"^-?\d[\d.e+-]* \[-?\d[\d.e+-]*, -?\d[\d.e+-]*\] n=\d+( †)?$")  # mean [lo, hi] n=prompts


def build_runs(root: Path) -> Path:
    """conditioning (2 arms x 2 seeds), mfg (a video grid with a named control) and half (trained only)."""
    build_grid(root, "conditioning")
    build_grid(root, "mfg", {"conditioning": ["cross_attn"], "mfg_scale": [None, 1.0, 2.0, 4.0], "seed": [0, 1]},
               video=True, n_prompts=6)
    build_grid(root, "half", stop_after="train", parquet=False)
    return root


def app(runs_dir: Path, monkeypatch, **query) -> AppTest:
    monkeypatch.setenv("GENTRON_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def view(at: AppTest, name: str) -> AppTest:
    return at.sidebar.radio[0].set_value(name).run()


def statuses(at: AppTest) -> list[str]:
    """The cells table's status column."""
    return list(at.table[1].value["status"])


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def chart_data(at: AppTest) -> list[dict[str, pd.DataFrame]]:
    """Each chart's named datasets (sent to the page as Arrow)."""
    import pyarrow as pa

    return [{d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets}
            for chart in at.get("vega_lite_chart")]


def color_encodings(spec) -> list[dict]:
    """Every `color` encoding anywhere in a Vega-Lite spec (layers, facets, concatenations)."""
    found = []
    if isinstance(spec, dict):
        encoding = spec.get("encoding")
        if isinstance(encoding, dict) and "color" in encoding:
            found.append(encoding["color"])
        for value in spec.values():
            found += color_encodings(value)
    elif isinstance(spec, list):
        for value in spec:
            found += color_encodings(value)
    return found


def latex_problems(text: str) -> list[str]:
    """What would stop a LaTeX tabular from compiling, found without LaTeX: environments that do not
    pair up, unbalanced braces, a `$` left open on a line, math inside \textbf (its `$` makes
    \textbf{$x$} fragile and a bold number is `$\mathbf{x}$`), characters that only work in math mode
    (`_`, `^`) or not at all (`%`, `#`, non-ASCII such as ± or †) outside it, and rows whose `&`s do
    not match the column specification."""
    problems = []
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", text):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            problems.append(f"\\end{{{env}}} without its \\begin")
    problems += [f"\\begin{{{env}}} never ended" for env in stack]
    if re.search(r"\\textbf\{[^}]*\$", text):
        problems.append("math inside \\textbf{...}")
    columns = 0
    for number, line in enumerate(text.splitlines(), 1):
        spec = re.match(r"\\begin\{tabular\}\{([lrc|]+)\}", line)
        if spec:
            columns = sum(c in "lrc" for c in spec.group(1))
            continue
        plain = re.sub(r"\\[\\$&%_#{}]", "", line)  # escaped characters (and the row end \\) are text
        depth, math = 0, False
        for char in plain:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth < 0:
                problems.append(f"line {number}: '}}' closes nothing")
                depth = 0
            if char == "$":
                math = not math
            elif char in "_^" and not math:
                problems.append(f"line {number}: '{char}' outside math mode")
            elif char in "%#":
                problems.append(f"line {number}: unescaped '{char}'")
            elif ord(char) > 127:
                problems.append(f"line {number}: non-ASCII {char!r}")
        if depth:
            problems.append(f"line {number}: unbalanced braces")
        if math:
            problems.append(f"line {number}: '$' left open")
        if line.rstrip().endswith("\\\\") and "\\multicolumn" not in line and plain.count("&") != columns - 1:
            problems.append(f"line {number}: {plain.count('&') + 1} cells in a {columns}-column tabular")
    return problems


def set_stage(cell_dir: Path, **entry) -> None:
    """The cell's manifest says its record stage is running, with `entry` (host, pid, start)."""
    found = json.loads((cell_dir / "manifest.json").read_text())
    found["status"] = "running"
    found["stages"]["record"] = {"status": "running", "start": "2025-01-01T00:00:00+00:00", **entry}
    (cell_dir / "manifest.json").write_text(json.dumps(found))


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
