# G-HANet survival workflow: whole-slide images + clinical/genomic table -> per-fold models -> report.
# Run:  snakemake --cores all            (local, default config: the embedded demo cohort)
#       snakemake --profile slurm          (SLURM cluster, once `ghanet-wf slurm-profile` wrote the site profile)
# See README.md and config/README.md.

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow's package, from this checkout even where snakemake's Python lacks it (jobs get it
# through PYTHONPATH, see common.smk).
if str(Path(workflow.basedir) / "src") not in sys.path:
    sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from ghanet_workflow.slide_table import config_error_message

# The demo's config only when no --configfile is given: a user's config is never merged over the
# demo's, so a key it leaves out takes the schema's documented default (config/README.md), not
# the demo's value. (--config KEY=VALUE alone still overrides the demo's config.)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


try:
    validate(config, "workflow/schemas/config.schema.yaml", set_default=True)
except WorkflowError as error:
    # the workflow's own one-line message and exit status 1, no stack
    message = config_error_message(error, workflow.overwrite_configfiles)
    logger.error(f"Error: {message}")
    sys.exit(1)


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
