"""The 'paper table': our variants in the shape of GenTron's Table 2 (T2I-CompBench categories),
next to the paper's own numbers (docs/method.md), exportable as CSV and LaTeX; and each of our
comparisons that Table 2 also makes, with our verdict (eval.verdicts) beside the paper's direction."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from eval import verdicts
from reports.results import as_text, group_over_seeds

CATEGORIES = ["color", "shape", "texture", "spatial", "non-spatial", "complex"]
PAPER_SOURCE = "GenTron paper, Table 2 (x100)"

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
                scale: float = 100.0) -> pd.DataFrame:
    """Rows = variants (seeds averaged), columns = the six categories (mean, x100 like the paper),
    plus '<category> ±' half-widths of the 95% CI and the 'grid/cell_id's each row averages."""
    subset = results[results["metric"].str.startswith(family + "/")]
    subset = subset.assign(category=subset["metric"].map(category_of)).dropna(subset=["category"])
    if subset.empty:
        return pd.DataFrame(columns=["variant", *CATEGORIES])
    labelled = _with_variant(subset, cells, variant_columns)
    grouped = group_over_seeds(labelled, cells, ["variant", "category"]).drop(columns="metric")
    grouped[["mean", "ci_low", "ci_high"]] *= scale
    means = grouped.pivot(index="variant", columns="category", values="mean")
    half = grouped.assign(half=(grouped["ci_high"] - grouped["ci_low"]) / 2).pivot(
        index="variant", columns="category", values="half")
    table = pd.DataFrame(index=means.index)
    for cat in CATEGORIES:
        table[cat] = means.get(cat)
    for cat in CATEGORIES:
        table[cat + " ±"] = half.get(cat)
    keys = labelled.assign(key=labelled["grid"] + "/" + labelled["cell_id"])
    cell_ids = keys.groupby("variant")["key"].agg(lambda s: " ".join(sorted(set(s))))
    return table.join(cell_ids.rename("cells")).reset_index()


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


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """source, variant and one '46.05 ± 2.10' text per category (the paper's rows: the number alone)."""
    shown = table[["source", "variant"]].copy()
    for cat in CATEGORIES:
        half = table[cat + " ±"] if cat + " ±" in table else pd.Series(None, index=table.index, dtype=float)
        shown[cat] = [("" if pd.isna(v) else f"{v:.2f}" if pd.isna(h) else f"{v:.2f} ± {h:.2f}")
                      for v, h in zip(table[cat], half)]
    return shown


def to_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, float_format="%.2f").encode("utf-8")


def to_latex(table: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> str:
    """A booktabs tabular: 'mean \\pm half-width' where a CI is known, the best value per column and source bold;
    with `comparisons` (paper_verdicts), a second tabular of our verdicts beside the paper's directions."""
    body = table[["source", "variant", *CATEGORIES]].copy()
    for cat in CATEGORIES:
        half = table[cat + " ±"] if cat + " ±" in table else pd.Series(None, index=table.index)
        best = table.groupby("source")[cat].transform("max")
        body[cat] = [_latex_cell(v, h, v == b) for v, h, b in zip(table[cat], half, best)]
    body["variant"] = body["variant"].map(_latex_escape)
    body["source"] = body["source"].map(_latex_escape)
    header = " & ".join(["Source", "Variant", *[c.capitalize() for c in CATEGORIES]]) + r" \\"
    rows = [" & ".join(map(str, r)) + r" \\" for r in body.itertuples(index=False)]
    main = "\n".join([r"\begin{tabular}{ll" + "r" * len(CATEGORIES) + "}", r"\toprule", header, r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}", ""])
    return main + ("\n" + comparisons_to_latex(comparisons) if comparisons is not None and len(comparisons) else "")


def _latex_cell(value, half, best: bool) -> str:
    if value is None or pd.isna(value):
        return "--"
    text = f"{value:.2f}"
    if half is not None and pd.notna(half):
        text += rf" \pm {half:.2f}"
    text = f"${text}$"
    return rf"\textbf{{{text}}}" if best else text


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
    ours = {verdicts.BETTER: 1, verdicts.WORSE: -1}.get(verdict, 0)
    if ours == 0:
        return verdicts.NOT_SEPARATED
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
        "p": table["p_value"].map(verdicts._p_text), "adjusted p": table["p_adjusted"].map(verdicts._p_text),
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
    if verdict == verdicts.NOT_SEPARATED:
        return f"not separated from {reference}"
    relation = {verdicts.BETTER: "better than", verdicts.WORSE: "worse than"}.get(verdict, verdict + " than")
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
            cells.append(rf"${r['difference']:+.2f}$ [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] {r['vs paper']}")
        rows.append(" & ".join([_latex_escape(grid), _latex_escape(part["comparison"].iloc[0]), *cells]) + r" \\")
    return "\n".join([r"\begin{tabular}{ll" + "l" * len(CATEGORIES) + "}", r"\toprule", header, r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}", ""])
