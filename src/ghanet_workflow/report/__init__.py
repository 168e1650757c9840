"""Report stage: every fold of every model aggregated into tables (markdown, LaTeX, CSV, HTML) and figures.

One module per product, one Snakemake rule per product (workflow/rules/report.smk):

- ``cindex``: per-fold C-index table, out-of-fold predictions, KM curves, C-index per fold;
- ``training``: training curves; ``qc``: failed slides + cohort QC, and the QC contact sheet;
- ``reconstruction``: gene reconstruction per signature group; ``attention``: G-HANet heatmaps;
- ``paper``: the models x cohorts table;

with ``inputs`` (finding and reading the per-fold files), ``text`` (cells and HTML pages),
``options`` (the ``report`` config section; light, read at DAG parse) and ``cli``
(``ghanet-wf report <product>``). Nothing here trains or predicts: a changed table option reruns
only the product that reads it. A fold or a slide that failed is listed with its reason, never
silently dropped.
"""
