"""Numbers as table cells, and markdown pages as standalone HTML (the form the Snakemake report shows)."""

from __future__ import annotations

import html
import re

import numpy as np

#: Placeholder for an undefined value in human-readable tables.
DASH = "—"
HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:.9em}"
    "th,td{border:1px solid #bbb;padding:.2em .5em;text-align:right}"
    "th{background:#eee}th:first-child,td:first-child{text-align:left}p,li{max-width:65em}"
)


def fmt_number(value, decimals: int) -> str:
    """A number rounded to ``decimals``; a dash for None/NaN."""
    if value is None or not np.isfinite(float(value)):
        return DASH
    return f"{float(value):.{decimals}f}"


def fmt_count(value) -> str:
    """An integer count; a dash for None/NaN."""
    if value is None or not np.isfinite(float(value)):
        return DASH
    return str(int(value))


def fmt_mean_std(mean, std, decimals: int, pm: str = "±") -> str:
    """``0.652 ± 0.031``; the std part is a dash when undefined (a single fold)."""
    if mean is None or not np.isfinite(mean):
        return DASH
    return f"{fmt_number(mean, decimals)} {pm} {fmt_number(std, decimals)}"


def fmt_ci(low, high, decimals: int) -> str:
    """``0.551–0.712``; a dash when either end is undefined."""
    if DASH in (lo := fmt_number(low, decimals), hi := fmt_number(high, decimals)):
        return DASH
    return f"{lo}–{hi}"


def std_name(ddof: int) -> str:
    """How the footnotes name the std convention: ``sample standard deviation (ddof=1)``."""
    kind = {0: "population", 1: "sample"}.get(int(ddof), "")
    return f"{kind} standard deviation (ddof={ddof})".lstrip()


def as_html_tables(options: dict) -> dict:
    """``options`` with tabulate's escaping ``html`` table format, for the HTML twin of a markdown page."""
    return {**options, "tablefmt": "html"}


def html_page(title: str, text: str) -> str:
    """A standalone HTML page from one of this module's markdown pages whose tables are already HTML.

    Blocks are separated by blank lines: a ``<table`` block is kept as is, ``#``/``##`` lines become
    headings, ``- `` lines list items and other lines paragraphs (all text HTML-escaped).
    """
    blocks = [
        b if b.lstrip().startswith("<table") else _html_block(b) for b in re.split(r"\n\s*\n", text.strip())
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(blocks) + "\n</body></html>\n"
    )


def _html_block(block: str) -> str:
    """HTML of one non-table markdown block (headings, list items, paragraphs)."""
    out, items = [], []
    for line in block.splitlines():
        if line.startswith("- "):
            items.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if items:
            out.append(f"<ul>{''.join(items)}</ul>")
            items = []
        heading = re.match(r"(#{1,3}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{html.escape(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if items:
        out.append(f"<ul>{''.join(items)}</ul>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """HTML-escaped text with markdown ``**bold**`` as <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in a model or cohort name."""
    return re.sub(r"([_&%#$])", r"\\\1", str(text))


def booktabs(latex: str) -> str:
    """A tabulate ``latex_raw`` table with booktabs rules (``\\usepackage{booktabs}``) instead of ``\\hline``."""
    lines = latex.splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip() == "\\hline"]
    for i, rule in zip(rules, ("\\toprule", "\\midrule")):
        lines[i] = rule
    if len(rules) > 2:
        lines[rules[-1]] = "\\bottomrule"
    return "\n".join(lines)
