"""The slide set's input functions: what tile_slide and extract_features receive for a slide or chunk."""

from __future__ import annotations

from types import SimpleNamespace

from ghanet_workflow.slide_set import SlideSet, by_cohort, chunk_keys

ROWS = {
    "b": {"path": "slides/b.svs", "slide_id": "b.svs", "mpp": float("nan")},
    "a": {"path": "slides/a.tiff", "slide_id": "a.tiff", "mpp": 0.25},
    "c": {"path": "slides/c.ndpi", "slide_id": "c.ndpi", "mpp": ""},
}


def test_chunks_are_sorted_keys_of_at_most_the_chunk_size():
    assert chunk_keys(["c", "a", "b"], 2) == {"chunk0000": ["a", "b"], "chunk0001": ["c"]}
    assert chunk_keys(["x"], 16, prefix="import") == {"import0000": ["x"]}
    assert chunk_keys([], 16) == {}


def test_input_functions_follow_the_slide_table_and_the_file_layout():
    slides = SlideSet(ROWS, ["b", "a", "c"], "results/demo", "resnet50_trunc", 2)
    a, b, c = (SimpleNamespace(slide=key) for key in "abc")
    assert slides.slide_path(a) == "slides/a.tiff" and slides.slide_id(b) == "b.svs"
    assert (slides.mpp_option(a), slides.mpp_option(b), slides.mpp_option(c)) == ("--mpp 0.25", "", "")
    first = SimpleNamespace(chunk="chunk0000")
    assert slides.chunk_slide_paths(first) == ["slides/a.tiff", "slides/b.svs"]
    assert slides.chunk_coords(first) == ["results/demo/tiles/a.h5", "results/demo/tiles/b.h5"]
    assert slides.chunk_feature_files(first)[0] == "results/demo/features/resnet50_trunc/a.h5"
    assert slides.manifests() == [
        "results/demo/features/resnet50_trunc/chunks/chunk0000.txt",
        "results/demo/features/resnet50_trunc/chunks/chunk0001.txt",
    ]
    assert slides.tile_qc_files()[2] == "results/demo/tiles/c.qc.json"


def test_an_encoders_slide_set_shares_the_tiles_and_the_dispatcher_follows_the_encoder_wildcard():
    default = SlideSet(ROWS, ["b", "a", "c"], "results/demo", "efficientnet_lite0", 2)
    other = default.with_encoder("uni")
    first = SimpleNamespace(chunk="chunk0000", cohort="demo")
    assert other.chunks == default.chunks and other.chunk_coords(first) == default.chunk_coords(first)
    assert other.chunk_feature_files(first) == ["results/demo/features/uni/a.h5", "results/demo/features/uni/b.h5"]
    sets = {"demo": {"efficientnet_lite0": default, "uni": other}}
    feature_files = by_cohort(sets, "chunk_feature_files", "efficientnet_lite0")
    # a rule without an {encoder} wildcard (tile_slide, build_cohort) gets the default encoder's set
    assert feature_files(first) == default.chunk_feature_files(first)
    with_encoder = SimpleNamespace(chunk="chunk0000", cohort="demo", encoder="uni")
    assert feature_files(with_encoder) == other.chunk_feature_files(first)
