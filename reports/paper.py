"""The 'paper table': our variants in the shape of GenTron's Table 2 (T2I-CompBench categories),
next to the paper's own numbers (docs/method.md), exportable as CSV and LaTeX."""
from __future__ import annotations

import re

import pandas as pd

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


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular: 'mean \\pm half-width' where a CI is known, the best value per column and source bold."""
    body = table[["source", "variant", *CATEGORIES]].copy()
    for cat in CATEGORIES:
        half = table[cat + " ±"] if cat + " ±" in table else pd.Series(None, index=table.index)
        best = table.groupby("source")[cat].transform("max")
        body[cat] = [_latex_cell(v, h, v == b) for v, h, b in zip(table[cat], half, best)]
    body["variant"] = body["variant"].map(_latex_escape)
    body["source"] = body["source"].map(_latex_escape)
    header = " & ".join(["Source", "Variant", *[c.capitalize() for c in CATEGORIES]]) + r" \\"
    rows = [" & ".join(map(str, r)) + r" \\" for r in body.itertuples(index=False)]
    return "\n".join([r"\begin{tabular}{ll" + "r" * len(CATEGORIES) + "}", r"\toprule", header, r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}", ""])


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
