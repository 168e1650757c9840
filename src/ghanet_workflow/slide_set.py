"""The slides one branch of the DAG tiles and featurises, and the Snakemake input functions over them.

Two branches use it, with the same rules: the cohort's slides (``results/<cohort>/tiles``,
``.../features/<encoder>``) and the new slides of ``snakemake predict``
(``results/<cohort>/predict/...``). Each method that takes ``wildcards`` is an input or params
function of a rule in workflow/rules/ (``{slide}`` is a slide key, ``{chunk}`` an extraction
chunk). Read on every DAG parse, and called tens of thousands of times in a 10,000-slide dry run:
plain dicts and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def chunk_keys(keys: Iterable[str], size: int, prefix: str = "chunk") -> dict[str, list[str]]:
    """Sorted slide keys in chunks of ``size``: ``{"chunk0000": [...], "chunk0001": [...]}``."""
    keys = sorted(keys)
    return {f"{prefix}{i // size:04d}": keys[i : i + size] for i in range(0, len(keys), size)}


#: the SlideSet methods that rules use as input or params functions
INPUT_FUNCTIONS = (
    "slide_path", "slide_id", "mpp_option", "chunk_slide_paths", "chunk_coords", "chunk_feature_files",
    "manifests", "tile_qc_files", "feature_files", "all_manifests", "import_sources", "import_feature_files",
)  # fmt: skip


def _plain_function(method):
    """``method`` as a plain one-argument function (same name and docstring)."""

    def function(wildcards=None):
        return method(wildcards)

    function.__name__, function.__doc__ = method.__name__, method.__doc__
    return function


class SlideSet:
    """Slides to tile and featurise: their table rows, their extraction chunks and their file layout.

    ``rows``: slide key -> row (``path``, ``slide_id``, ``mpp``) of the slide table; ``tiled``: the
    keys of the slides to tile (on disk, without bring-your-own features); ``out_dir``: the folder
    holding ``tiles/`` and ``features/<encoder>/``.
    """

    def __init__(
        self,
        rows: Mapping[str, Mapping],
        tiled: Iterable[str],
        out_dir: str,
        encoder: str,
        slides_per_job: int,
        external: Mapping[str, str] | None = None,
    ):
        self.rows = rows
        self.tiled = sorted(tiled)
        self.out_dir = out_dir
        self.encoder = encoder
        self.slides_per_job = slides_per_job
        self.chunks = chunk_keys(self.tiled, slides_per_job)
        # bring-your-own features: slide key -> CLAM/TRIDENT file, one import job per chunk of them
        self.external = dict(external or {})
        self.import_chunks = chunk_keys(self.external, slides_per_job, prefix="import")
        # Snakemake inspects an input function's signature at every call (tens of thousands in a
        # large dry run), and a bound method's costs twice a plain function's: the rules get
        # plain functions.
        for name in INPUT_FUNCTIONS:
            setattr(self, name, _plain_function(getattr(self, name)))

    def with_encoder(self, encoder: str) -> "SlideSet":
        """The same slides and tiles, with the features of another encoder (label)."""
        return SlideSet(self.rows, self.tiled, self.out_dir, encoder, self.slides_per_job, self.external)

    # ------------------------------------------------------------ file layout

    def coords_file(self, key: str) -> str:
        return f"{self.out_dir}/tiles/{key}.h5"

    def feature_file(self, key: str) -> str:
        return f"{self.out_dir}/features/{self.encoder}/{key}.h5"

    def manifest_file(self, chunk: str) -> str:
        return f"{self.out_dir}/features/{self.encoder}/chunks/{chunk}.txt"

    # ------------------------------------------------------------ per slide (tile_slide)

    def slide_path(self, wildcards) -> str:
        return self.rows[wildcards.slide]["path"]

    def slide_id(self, wildcards) -> str:
        return self.rows[wildcards.slide]["slide_id"]

    def mpp_option(self, wildcards) -> str:
        """``--mpp <µm/px>`` where the slide table gives the slide's resolution, else nothing."""
        mpp = self.rows[wildcards.slide].get("mpp")
        return "" if mpp is None or mpp == "" or math.isnan(float(mpp)) else f"--mpp {float(mpp)}"

    # ------------------------------------------------------------ per chunk (extract_features)

    def chunk_slide_paths(self, wildcards) -> list[str]:
        return [self.rows[key]["path"] for key in self.chunks[wildcards.chunk]]

    def chunk_coords(self, wildcards) -> list[str]:
        return [self.coords_file(key) for key in self.chunks[wildcards.chunk]]

    def chunk_feature_files(self, wildcards) -> list[str]:
        return [self.feature_file(key) for key in self.chunks[wildcards.chunk]]

    def manifests(self, wildcards=None) -> list[str]:
        """Every extraction chunk's manifest (what the cohort or the predict step waits for)."""
        return [self.manifest_file(chunk) for chunk in self.chunks]

    def tile_qc_files(self, wildcards=None) -> list[str]:
        return [f"{self.out_dir}/tiles/{key}.qc.json" for key in self.tiled]

    # ------------------------------------------------------------ with the imported features (build_cohort)

    def feature_files(self, wildcards=None) -> list[str]:
        """Per-slide feature files, extracted and imported (what the cohort stage reads)."""
        return [self.feature_file(key) for key in sorted([*self.tiled, *self.external])]

    def all_manifests(self, wildcards=None) -> list[str]:
        """The manifests of every extraction and import chunk."""
        return self.manifests() + [self.manifest_file(chunk) for chunk in self.import_chunks]

    def import_sources(self, wildcards) -> list[str]:
        return [self.external[key] for key in self.import_chunks[wildcards.chunk]]

    def import_feature_files(self, wildcards) -> list[str]:
        return [self.feature_file(key) for key in self.import_chunks[wildcards.chunk]]


def by_cohort(slide_sets: Mapping[str, Mapping[str, SlideSet]], name: str, default_encoder: str):
    """Input function: the ``name`` function of the SlideSet of the job's ``{cohort}`` wildcard.

    ``slide_sets``: cohort -> encoder label -> SlideSet. A rule with an ``{encoder}`` wildcard gets
    that encoder's set (its feature files), any other the default encoder's.
    """
    functions = {
        (cohort, label): getattr(slides, name)
        for cohort, sets in slide_sets.items()
        for label, slides in sets.items()
    }

    def function(wildcards):
        return functions[wildcards.cohort, getattr(wildcards, "encoder", default_encoder)](wildcards)

    function.__name__ = name
    return function
