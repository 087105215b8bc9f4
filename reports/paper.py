"""The 'paper table': our variants in the shape of GenTron's Table 2 (T2I-CompBench categories),
next to the paper's own numbers (docs/method.md), exportable as CSV and LaTeX; and each of our
comparisons that Table 2 also makes, with our verdict (eval.verdicts) beside the paper's direction."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from eval import paired, verdicts
from reports.results import FEW, MIN_PROMPTS, SEED, STEPS, as_text, count_text, group_over_seeds

CATEGORIES = ["color", "shape", "texture", "spatial", "non-spatial", "complex"]
PAPER_SOURCE = "GenTron Table 2"

PAPER_TABLE2 = pd.DataFrame(
    [
        ["adaLN-Zero, CLIP-L, XL/2", 36.94, 42.06, 50.73, 9.41, 30.38, 36.41],
        ["cross-attn, CLIP-L, XL/2", 73.91, 51.81, 68.76, 19.26, 31.80, 41.52],
        ["cross-attn, T5-XXL, XL/2", 74.90, 55.40, 70.05, 20.52, 31.68, 41.01],
        ["cross-attn, CLIP-T5XXL, XL/2", 75.65, 55.74, 69.48, 20.67, 31.79, 41.44],
        ["cross-attn, CLIP-T5XXL, G/2", 76.74, 57.00, 71.50, 20.98, 32.02, 41.67],
    ],
    columns=["variant", *CATEGORIES],
)


# Our grids' arms (the grid files' arm names) as rows of PAPER_TABLE2: every pair of rows one grid
# holds is a comparison the paper makes (cross-attention vs adaLN; T5 vs CLIP, both vs either; G/2 vs XL/2).
PAPER_ARMS = {"conditioning": {"adaln": 0, "cross_attn": 1},
              "text_encoder": {"clip": 1, "t5": 2, "clip+t5": 3},
              "scale": {"XL/2": 3, "G/2": 4}}
AGREES, DISAGREES = "agrees", "disagrees"
COMPARISON_COLUMNS = ["grid", "comparison", "category", "ours", "p", "adjusted p", "verdict", "paper", "vs paper"]


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def category_of(metric: str) -> str | None:
    """'compshapes_judge/non_spatial' -> 'non-spatial'; None for metrics outside the six categories."""
    leaf = _norm(metric.rsplit("/", 1)[-1])
    return next((c for c in CATEGORIES if _norm(c) == leaf), None)


def metric_families(results: pd.DataFrame) -> list[str]:
    """Metric prefixes ('compshapes_judge') that score at least one Table 2 category."""
    metrics = results["metric"].unique() if not results.empty else []
    return sorted({m.rsplit("/", 1)[0] for m in metrics if "/" in m and category_of(m)})


def paper_table(results: pd.DataFrame, cells: pd.DataFrame, variant_columns: list[str], family: str,
                scale: float = 100.0, order: list[str] | None = None) -> pd.DataFrame:
    """Rows = variants (seeds averaged; in `order`, e.g. variant_order's, else by name), columns = the
    six categories (mean, x100 like the paper), '<category> lo' / '<category> hi' (the 95% CI, not
    necessarily symmetric), '<category> n' (the fewest prompts of the category in any of the row's
    cells), and the row's provenance: `seeds`, `steps` (train.steps) and the 'grid/cell_id's it averages."""
    subset = results[results["metric"].str.startswith(family + "/")]
    subset = subset.assign(category=subset["metric"].map(category_of)).dropna(subset=["category"])
    if subset.empty:
        return pd.DataFrame(columns=["variant", *CATEGORIES])
    labelled = _with_variant(subset, cells, variant_columns)
    grouped = group_over_seeds(labelled, cells, ["variant", "category"]).drop(columns="metric")
    grouped[["mean", "ci_low", "ci_high"]] *= scale
    table = pd.DataFrame(index=pd.Index(sorted(grouped["variant"].unique()), name="variant"))
    wide = {name: grouped.pivot(index="variant", columns="category", values=col)
            for name, col in (("", "mean"), (" lo", "ci_low"), (" hi", "ci_high"))}
    n = labelled.assign(n=pd.to_numeric(labelled["n"], errors="coerce") if "n" in labelled else np.nan)
    wide[" n"] = n[n["mean"].notna()].groupby(["variant", "category"])["n"].min().unstack()
    for suffix in ("", " lo", " hi", " n"):
        for cat in CATEGORIES:
            table[cat + suffix] = wide[suffix].get(cat) if cat in wide[suffix] else np.nan
    for cat in CATEGORIES:
        table[cat + " n"] = table[cat + " n"].astype("Int64")
    info = labelled[labelled["mean"].notna()].merge(
        cells[["grid", "cell_id", *[c for c in (SEED, STEPS) if c in cells]]], on=["grid", "cell_id"], how="left",
        suffixes=("_row", ""))
    by_variant = info.groupby("variant")
    table["seeds"] = by_variant[SEED].nunique() if SEED in info else by_variant["cell_id"].nunique()
    table["seeds"] = table["seeds"].astype("Int64")
    table["steps"] = by_variant[STEPS].agg(count_text) if STEPS in info else ""
    keys = labelled.assign(key=labelled["grid"] + "/" + labelled["cell_id"])
    cell_ids = keys.groupby("variant")["key"].agg(lambda s: " ".join(sorted(set(s))))
    table = table.join(cell_ids.rename("cells"))
    if order:
        rank = {v: i for i, v in enumerate(order)}
        table = table.iloc[sorted(range(len(table)), key=lambda i: (rank.get(table.index[i], len(rank)),
                                                                     table.index[i]))]
    return table.reset_index()


def variant_order(cells: pd.DataFrame, variant_columns: list[str]) -> list[str]:
    """The variant labels of `cells` (as paper_table names them) in the cells' order: sort the cells
    first (grid by grid, each in its grid file's arm order) to get the rows in that order."""
    if not variant_columns:
        return ["all"]
    return list(dict.fromkeys(_with_variant(cells[["grid", "cell_id"]], cells, variant_columns)["variant"]))


def _with_variant(subset: pd.DataFrame, cells: pd.DataFrame, variant_columns: list[str]) -> pd.DataFrame:
    if not variant_columns:
        return subset.assign(variant="all")
    keys = ["grid", "cell_id"]  # "grid" may also be a variant column (several grids in one table)
    info = cells[list(dict.fromkeys([*keys, *variant_columns]))]
    merged = subset.drop(columns=[c for c in variant_columns if c in subset.columns and c not in keys]).merge(info, on=keys)
    texts = merged[variant_columns].apply(as_text).mask(merged[variant_columns].isna(), "")
    label = texts.agg(lambda row: ", ".join(v for v in row if v), axis=1)  # an axis another grid has: left out
    return merged.assign(variant=label).drop(columns=[c for c in variant_columns if c not in keys])


def side_by_side(ours: pd.DataFrame, include_paper: bool) -> pd.DataFrame:
    """Our rows (source 'ours') and, if asked, the paper's rows below them, same columns."""
    table = ours.assign(source="ours")
    if include_paper:
        table = pd.concat([table, PAPER_TABLE2.assign(source=PAPER_SOURCE)], ignore_index=True)
    first = ["source", "variant", *CATEGORIES]
    return table[first + [c for c in table.columns if c not in first]]


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table else pd.Series(np.nan, index=table.index, dtype=float)


def _n_range(table: pd.DataFrame) -> list[str]:
    """Per row, the fewest and most prompts behind a category entry: '94' or '94-100' ('' for the paper's rows)."""
    ns = pd.DataFrame({cat: pd.to_numeric(_column(table, cat + " n"), errors="coerce") for cat in CATEGORIES})
    low, high = ns.min(axis=1), ns.max(axis=1)
    return ["" if pd.isna(lo) else f"{int(lo)}" if lo == hi else f"{int(lo)}-{int(hi)}" for lo, hi in zip(low, high)]


def entry_text(value, low, high, n=None, min_prompts: int = MIN_PROMPTS) -> str:
    """'46.05 [41.2, 50.9]' (the paper's rows: the number alone), FEW when from fewer than `min_prompts` prompts."""
    if value is None or pd.isna(value):
        return ""
    text = f"{value:.2f}" if pd.isna(low) or pd.isna(high) else f"{value:.2f} [{low:.1f}, {high:.1f}]"
    return text + (f" {FEW}" if n is not None and pd.notna(n) and int(n) < min_prompts else "")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """source, variant, each row's seeds, training steps and n (the fewest-most prompts of its
    categories), then one '46.05 [41.2, 50.9]' text per category (the paper's rows: the number alone;
    FEW marks an entry from fewer than MIN_PROMPTS prompts)."""
    shown = table[["source", "variant"]].copy()
    shown["seeds"] = [("" if pd.isna(v) else str(int(v))) for v in _column(table, "seeds")]
    shown["steps"] = [("" if not isinstance(v, str) else v) for v in _column(table, "steps")]
    shown["n"] = _n_range(table)
    for cat in CATEGORIES:
        shown[cat] = [entry_text(v, lo, hi, n) for v, lo, hi, n in
                      zip(table[cat], _column(table, cat + " lo"), _column(table, cat + " hi"),
                          _column(table, cat + " n"))]
    return shown


def to_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, float_format="%.2f").encode("utf-8")


def to_latex(table: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> str:
    """A booktabs tabular: 'mean [lo, hi]' where a CI is known (the interval need not be symmetric),
    the best mean per column and source in bold ($\\mathbf{...}$), a dagger on entries from fewer than
    MIN_PROMPTS prompts, and each row's seeds, training steps and n; with `comparisons`
    (paper_verdicts), a second tabular of our verdicts beside the paper's directions."""
    body = table[["source", "variant"]].copy()
    body["variant"] = body["variant"].map(_latex_escape)
    body["source"] = body["source"].map(_latex_escape)
    body["seeds"] = [("--" if pd.isna(v) else str(int(v))) for v in _column(table, "seeds")]
    body["steps"] = [(_latex_escape(v) if isinstance(v, str) and v else "--") for v in _column(table, "steps")]
    body["n"] = [(v.replace("-", "--") if v else "--") for v in _n_range(table)]
    for cat in CATEGORIES:
        best = table.groupby("source")[cat].transform("max")
        body[cat] = [_latex_cell(v, lo, hi, n, v == b) for v, lo, hi, n, b in
                     zip(table[cat], _column(table, cat + " lo"), _column(table, cat + " hi"),
                         _column(table, cat + " n"), best)]
    header = " & ".join(["Source", "Variant", "Seeds", "Steps", "$n$", *[c.capitalize() for c in CATEGORIES]]) + r" \\"
    rows = [" & ".join(map(str, r)) + r" \\" for r in body.itertuples(index=False)]
    note = (rf"\multicolumn{{{len(body.columns)}}}{{l}}{{\footnotesize Mean [95\% CI]; $n$: prompts per category; "
            rf"\textsuperscript{{\dag}} fewer than {MIN_PROMPTS} prompts.}} \\")
    main = "\n".join([r"\begin{tabular}{llrrr" + "r" * len(CATEGORIES) + "}", r"\toprule", header, r"\midrule",
                      *rows, r"\bottomrule", note, r"\end{tabular}", ""])
    return main + ("\n" + comparisons_to_latex(comparisons) if comparisons is not None and len(comparisons) else "")


def _latex_cell(value, low, high, n, best: bool) -> str:
    if value is None or pd.isna(value):
        return "--"
    number = rf"\mathbf{{{value:.2f}}}" if best else f"{value:.2f}"
    text = f"${number}$"
    if pd.notna(low) and pd.notna(high):
        text += rf" {{\scriptsize $[{low:.1f}, {high:.1f}]$}}"
    if n is not None and pd.notna(n) and int(n) < MIN_PROMPTS:
        text += r"\textsuperscript{\dag}"
    return text


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text) -> str:
    return re.sub(r"[\\&%_#${}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


# ---------------------------------------------------------------- our verdicts beside the paper's directions


def paper_row(keys: dict[str, str]) -> int | None:
    """The PAPER_TABLE2 row of an arm ({axis: grid file arm name}), or None when Table 2 has none."""
    rows = {PAPER_ARMS[axis][name] for axis, name in keys.items() if name in PAPER_ARMS.get(axis, {})}
    return rows.pop() if len(rows) == 1 else None


def paper_pairs(arms: verdicts.Arms) -> list[tuple[str, str, int, int]]:
    """(arm, reference, arm's paper row, reference's paper row) for every two arms that are both
    Table 2 rows, the reference being the paper's earlier row."""
    mapped = [(label, paper_row(arms.keys[label])) for label in arms.labels]
    mapped = [(label, row) for label, row in mapped if row is not None]
    return [(a, r, ra, rr) for (r, rr) in mapped for (a, ra) in mapped if rr < ra]


def paper_difference(arm_row: int, reference_row: int, category: str) -> float:
    """Table 2's arm - reference in a category (x100, as printed)."""
    return float(PAPER_TABLE2.loc[arm_row, category] - PAPER_TABLE2.loc[reference_row, category])


def agreement(verdict: str, paper_diff: float) -> str:
    """`agrees` when our separated verdict has the paper's sign, `disagrees` when the opposite sign
    (or the paper shows no difference), `not separated` when ours is not separated."""
    ours = {paired.BETTER: 1, paired.WORSE: -1}.get(verdict, 0)
    if ours == 0:
        return paired.NOT_SEPARATED
    return AGREES if ours == np.sign(paper_diff) else DISAGREES


def paper_verdicts(scores: pd.DataFrame, family: str, grid: str = "", order: dict | None = None, *,
                   correction: str = "holm", level: float = verdicts.LEVEL, n_boot: int = verdicts.N_BOOT,
                   scale: float = 100.0) -> pd.DataFrame:
    """Our verdict on each comparison Table 2 makes within one grid (its arms that are Table 2 rows:
    paper_pairs), per category of `family`, the p-values adjusted over these comparisons, beside the
    paper's difference (COMPARISON_COLUMNS, plus arm, reference, metric and the numbers: difference,
    ci_low, ci_high, x `scale`, paper_difference, p_value, p_adjusted, arm_cells). Empty when the grid
    has no such pair."""
    part = scores[scores["metric"].str.startswith(family + "/") & scores["metric"].map(category_of).notna()]
    empty = pd.DataFrame(columns=COMPARISON_COLUMNS)
    if part.empty:
        return empty
    arms = verdicts.find_arms(part, order)
    pairs = paper_pairs(arms)
    if not pairs:
        return empty
    rows = {(a, r): (ra, rr) for a, r, ra, rr in pairs}
    table = verdicts.compare(part, pairs=[(a, r) for a, r, _, _ in pairs], order=order,
                             correction=correction, level=level, n_boot=n_boot)
    table = table.dropna(subset=["difference"]).reset_index(drop=True)
    if table.empty:
        return empty
    table["category"] = table["metric"].map(category_of)
    table["paper_difference"] = [paper_difference(*rows[(a, r)], c) for a, r, c in
                                 zip(table["arm"], table["control"], table["category"])]
    for col in ("difference", "ci_low", "ci_high"):
        table[col] = table[col] * scale
    out = pd.DataFrame({
        "grid": grid, "comparison": [f"{_short(a)} vs {_short(r)}" for a, r in zip(table["arm"], table["control"])],
        "category": table["category"],
        "ours": [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi in
                 zip(table["difference"], table["ci_low"], table["ci_high"])],
        "p": table["p_value"].map(verdicts.p_text), "adjusted p": table["p_adjusted"].map(verdicts.p_text),
        "verdict": table["verdict"], "paper": table["paper_difference"].map(lambda v: f"{v:+.2f}"),
        "vs paper": [agreement(v, p) for v, p in zip(table["verdict"], table["paper_difference"])]})
    order_cat = {c: i for i, c in enumerate(CATEGORIES)}
    out = pd.concat([out, table[["arm", "metric", "difference", "ci_low", "ci_high", "p_value", "p_adjusted",
                                 "paper_difference", "n_seeds", "method", "correction", "level", "arm_cells"]],
                     table["control"].rename("reference")], axis=1)
    out = out.assign(_c=out["category"].map(order_cat)).sort_values(["arm", "reference", "_c"], kind="stable")
    out = out.drop(columns="_c").reset_index(drop=True)
    out.attrs.update(table.attrs)
    return out


def comparison_display(comparisons: pd.DataFrame) -> pd.DataFrame:
    """What the view shows of paper_verdicts: the text columns."""
    return comparisons[COMPARISON_COLUMNS].reset_index(drop=True)


def _short(label: str) -> str:
    """'conditioning=adaln' -> 'adaln' (the values of a label, without the axis names)."""
    return ", ".join(part.split("=", 1)[-1] for part in str(label).split(", "))


def with_verdicts(table: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """The side-by-side table with a '<category> verdict' column per category: on each of our rows,
    its verdict against each reference Table 2 compares it with and whether the paper agrees
    ('better than adaln, agrees'); empty elsewhere. Our row and a comparison's arm are matched by
    their cells (grid/cell_id)."""
    out = table.copy()
    for cat in CATEGORIES:
        out[cat + " verdict"] = ""
    if comparisons is None or comparisons.empty or "cells" not in out:
        return out
    for i, row in out.iterrows():
        if row.get("source") != "ours" or not isinstance(row.get("cells"), str):
            continue
        keys = set(row["cells"].split())
        for cat in CATEGORIES:
            texts = []
            for c in comparisons[comparisons["category"] == cat].to_dict("records"):
                arm_keys = {f"{c['grid']}/{cell}" for cell in str(c["arm_cells"]).split()}
                if arm_keys and arm_keys <= keys:
                    texts.append(_verdict_text(c["verdict"], _short(c["reference"]), c["vs paper"]))
            out.at[i, cat + " verdict"] = "; ".join(texts)
    return out


def _verdict_text(verdict: str, reference: str, vs_paper: str) -> str:
    if verdict == paired.NOT_SEPARATED:
        return f"not separated from {reference}"
    relation = {paired.BETTER: "better than", paired.WORSE: "worse than"}.get(verdict, verdict + " than")
    return f"{relation} {reference}, {vs_paper}"


def comparisons_to_latex(comparisons: pd.DataFrame) -> str:
    """A booktabs tabular of our comparisons: one row per comparison, per category our difference
    (x100) with its interval and whether the paper agrees."""
    if comparisons is None or comparisons.empty:
        return ""
    header = " & ".join(["Grid", "Comparison", *[c.capitalize() for c in CATEGORIES]]) + r" \\"
    rows = []
    for (grid, arm, reference), part in comparisons.groupby(["grid", "arm", "reference"], sort=False):
        cells = []
        for cat in CATEGORIES:
            hit = part[part["category"] == cat]
            if hit.empty:
                cells.append("--")
                continue
            r = hit.iloc[0]
            cells.append(rf"${r['difference']:+.2f}$ {{\scriptsize $[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]$}} "
                         + _latex_escape(r["vs paper"]))
        rows.append(" & ".join([_latex_escape(grid), _latex_escape(part["comparison"].iloc[0]), *cells]) + r" \\")
    return "\n".join([r"\begin{tabular}{ll" + "l" * len(CATEGORIES) + "}", r"\toprule", header, r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}", ""])
