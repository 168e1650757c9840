"""``ghanet-wf slurm-profile``: write the site's SLURM profile, so that ``snakemake --profile slurm`` runs.

Snakemake looks up a profile given by name (``--profile slurm``) in the current folder, then in
the user's config folder (``$XDG_CONFIG_HOME/snakemake``, by default ``~/.config/snakemake``),
then in ``/etc/xdg/snakemake``. Many clusters already provide a ``slurm`` profile there; for
those that do not, this command writes one from ``profiles/slurm/config.yaml`` with the site's
account and partition (asked for when not given and a terminal is attached), and optionally a
separate GPU partition and a QoS. Everything else (GPU requests per rule, grouping, retries,
growing memory and time) stays in the workflow profile ``profiles/default/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

import yaml

from .atomic import write_text
from .errors import InputError

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parents[2] / "profiles" / "slurm" / "config.yaml"
#: rules that ask for a GPU (``gpu=1`` in workflow/rules/); a GPU partition or QoS applies to these
GPU_RULES = ("extract_features", "train_fold", "predict_extract_features")
#: account, partition and QoS names as SLURM accepts them
NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def default_destination() -> Path:
    """``$XDG_CONFIG_HOME/snakemake/slurm`` (``~/.config/snakemake/slurm`` when the variable is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake" / "slurm"


def checked_name(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not NAME.fullmatch(value):
        raise InputError(f"{option} {value!r} is not a SLURM name (letters, digits, _ . + - only)")
    return value


def profile_text(
    account: str,
    partition: str,
    gpu_partition: str | None = None,
    qos: str | None = None,
    jobs: int | None = None,
    template: Path = TEMPLATE,
) -> str:
    """The site profile: the template with the site's values, plus set-resources for the GPU rules."""
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the profile template {template}: {exc}") from exc
    for placeholder in ("YOUR_ACCOUNT", "YOUR_PARTITION"):
        if placeholder not in text:
            raise InputError(f"profile template {template} lacks the placeholder {placeholder}")
    text = text.replace("YOUR_ACCOUNT", account).replace("YOUR_PARTITION", partition)
    if jobs is not None:
        text = re.sub(r"(?m)^jobs: \d+", f"jobs: {int(jobs)}", text)
    if qos:
        text = text.rstrip("\n") + f"\n  slurm_extra: \"'--qos={qos}'\"\n"
    if gpu_partition:
        gpu_block = {rule: {"slurm_partition": gpu_partition} for rule in GPU_RULES}
        text += "\n# GPU rules run in their own partition.\n" + yaml.safe_dump({"set-resources": gpu_block})
    yaml.safe_load(text)  # the written file must parse
    return text


def _ask(prompt: str) -> str | None:
    if not sys.stdin.isatty():
        return None
    answer = input(prompt).strip()
    return answer or None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ghanet-wf slurm-profile", description=__doc__.splitlines()[0])
    parser.add_argument("--account", help="SLURM account (sacctmgr -n show assoc user=$USER format=account)")
    parser.add_argument("--partition", help="partition for every job (sinfo -s)")
    parser.add_argument("--gpu-partition", help="partition for the GPU jobs, if GPUs sit in their own")
    parser.add_argument("--qos", help="QoS for every job (optional)")
    parser.add_argument("--jobs", type=int, help="SLURM jobs queued or running at once (default 100)")
    parser.add_argument("--dest", type=Path, help=f"profile folder (default {default_destination()})")
    parser.add_argument("--force", action="store_true", help="replace an existing profile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    account = checked_name(args.account or _ask("SLURM account: "), "--account")
    partition = checked_name(args.partition or _ask("SLURM partition: "), "--partition")
    if not account or not partition:
        raise InputError("give --account and --partition (or run it in a terminal to be asked)")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs {args.jobs}: give at least 1 (SLURM jobs queued or running at once)")
    dest = args.dest or default_destination()
    target = dest / "config.yaml"
    if target.exists() and not args.force:
        raise InputError(f"{target} exists already; pass --force to replace it, or edit it by hand")
    text = profile_text(
        account,
        partition,
        checked_name(args.gpu_partition, "--gpu-partition"),
        checked_name(args.qos, "--qos"),
        args.jobs,
    )
    dest.mkdir(parents=True, exist_ok=True)
    write_text(target, text)
    log.info("wrote %s; run the workflow with: snakemake --profile %s", target, "slurm" if args.dest is None else dest)
    return 0
