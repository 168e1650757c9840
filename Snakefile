# G-HANet survival workflow: whole-slide images + clinical/genomic table -> per-fold models -> report.
# Run:  snakemake --cores all            (local, default config: the embedded demo cohort)
#       snakemake --profile profiles/slurm   (SLURM cluster)
# See README.md and config/README.md.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),


onerror:
    write_partial_report()
