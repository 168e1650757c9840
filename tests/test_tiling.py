"""Tiling on real slides (OpenSlide, HDF5, PNG): coordinates on tissue, MPP handling, bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import tifffile

from ghanet_workflow import tiling
from ghanet_workflow.errors import InputError, SlideError
from ghanet_workflow.features import read_coords  # the feature stage's reader of the coords files
from ghanet_workflow.slides import MppInfo, SlideReader, level_for_downsample, resolve_mpp

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "data/slides/CMU-1-Small-Region.svs"
TCGA_NO_MPP = ROOT / "data/slides/TCGA-CR-7395-01A-01-TS1.svs"
FIXTURES = ROOT / "tests/data/slides"


def run_tiling(slide: Path, out_dir: Path, slide_id: str, **kwargs) -> dict:
    """Tile ``slide`` into ``out_dir`` and return the QC row."""
    return tiling.tile_slide(
        slide,
        slide_id=slide_id,
        out_h5=out_dir / f"{slide_id}.h5",
        out_qc_json=out_dir / f"{slide_id}.qc.json",
        out_png=out_dir / "qc" / f"{slide_id}.png",
        **kwargs,
    )


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (0..255) of an RGB image."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


def assert_outputs_consistent(out_dir: Path, slide_id: str, row: dict) -> tuple[np.ndarray, dict]:
    """The three outputs exist and agree with the returned QC row."""
    coords, attrs = read_coords(out_dir / f"{slide_id}.h5")
    assert coords.dtype == np.int64 and coords.shape == (row["n_patches"], 2)
    assert attrs["status"] == row["status"] and attrs["reason"] == row["reason"]
    assert json.loads((out_dir / f"{slide_id}.qc.json").read_text())["status"] == row["status"]
    picture = cv2.imread(str(out_dir / "qc" / f"{slide_id}.png"))
    assert picture is not None and picture.shape[0] > 50 and picture.shape[1] > 50
    assert not list(out_dir.rglob(".tmp-*"))
    return coords, attrs


@pytest.fixture(scope="module")
def cmu_tiled(tmp_path_factory):
    """CMU-1-Small-Region tiled once with the defaults."""
    out = tmp_path_factory.mktemp("cmu")
    row = run_tiling(CMU, out, "CMU-1-Small-Region")
    coords, attrs = assert_outputs_consistent(out, "CMU-1-Small-Region", row)
    return row, coords, attrs


def test_cmu_patches_lie_on_tissue_and_skip_background(cmu_tiled):
    row, coords, attrs = cmu_tiled
    assert row["status"] == "ok" and row["n_patches"] >= 20
    assert row["mpp_source"] == "openslide.mpp-x" and row["mpp"] == pytest.approx(0.499)
    size0 = attrs["patch_size_level0"]
    assert size0 == 257 and attrs["patch_level"] == 0
    # independent check on the real level-0 pixels: kept patches are saturated (stained),
    # and every grid patch that is essentially white is excluded
    with SlideReader(CMU) as reader:
        pixels = reader.read_region_rgb((0, 0), 0, reader.slide.dimensions)
    stained = saturation(pixels) > 25
    kept_stained = np.array([stained[y : y + size0, x : x + size0].mean() for x, y in coords])
    assert np.median(kept_stained) > 0.5 and kept_stained.min() > 0.1
    grid = tiling.grid_coords(attrs["level0_width"], attrs["level0_height"], size0, size0)
    white = [tuple(c) for c in grid if stained[c[1] : c[1] + size0, c[0] : c[0] + size0].mean() < 0.02]
    assert len(white) > 20
    assert not set(white) & {tuple(c) for c in coords}


def test_cmu_coords_agree_with_tissue_mask_and_are_row_major(cmu_tiled):
    _, coords, attrs = cmu_tiled
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    assert np.array_equal(order, np.arange(len(coords)))
    assert (coords >= 0).all()
    assert (coords[:, 0] + attrs["patch_size_level0"] <= attrs["level0_width"]).all()
    assert (coords[:, 1] + attrs["patch_size_level0"] <= attrs["level0_height"]).all()
    opts = tiling.resolve_options({})
    with SlideReader(CMU) as reader:
        thumbnail = tiling.read_thumbnail(reader, attrs["slide_mpp"], opts)
    mask = tiling.tissue_mask(thumbnail, opts)
    fractions = tiling.mask_fractions(mask, tiling.thumb_boxes(coords, attrs["patch_size_level0"], thumbnail))
    assert (fractions >= opts["min_tissue_fraction"]).all()
    assert 0.2 < mask.mean() < 0.6  # a strip of skin on a mostly white slide


def test_cmu_attributes_follow_the_contract(cmu_tiled):
    row, _, attrs = cmu_tiled
    expected = {
        "patch_size": 256,
        "patch_level": 0,
        "downsample": 1.0,
        "target_mpp": 0.5,
        "overlap": 0,
        "level0_width": 2220,
        "level0_height": 2967,
        "status": "ok",
        "reason": "",
        "mpp_source": "openslide.mpp-x",
        "slide_id": "CMU-1-Small-Region",
    }
    assert {key: attrs[key] for key in expected} == expected
    assert attrs["level0_magnification"] == pytest.approx(20.04, abs=0.01)
    assert attrs["target_magnification"] == pytest.approx(20.0)
    assert attrs["achieved_mpp"] == pytest.approx(0.5, rel=0.01)
    assert row["tissue_area_mm2"] > 0.3 and row["n_flagged_background"] < row["n_patches"]


def test_flags_count_pen_ink_on_cmu(cmu_tiled):
    row, _, _ = cmu_tiled
    # CMU-1 carries teal tissue-marking dye along its right edge
    assert row["n_flagged_pen"] >= 1
    assert row["n_flagged_blur"] == 0


def test_slide_without_mpp_fails_naming_the_column(tmp_path):
    row = run_tiling(TCGA_NO_MPP, tmp_path, "TCGA-CR-7395")
    coords, attrs = assert_outputs_consistent(tmp_path, "TCGA-CR-7395", row)
    assert row["status"] == "failed" and len(coords) == 0
    assert "TCGA-CR-7395" in row["reason"] and "`mpp` column" in row["reason"]
    assert np.isnan(attrs["slide_mpp"]) and attrs["level0_width"] == 4443


def test_mpp_override_makes_the_slide_usable_and_picks_level_1(tmp_path):
    row = run_tiling(TCGA_NO_MPP, tmp_path, "TCGA-CR-7395", mpp_override=0.25)
    coords, attrs = assert_outputs_consistent(tmp_path, "TCGA-CR-7395", row)
    assert row["status"] == "ok" and row["mpp_source"] == "override" and len(coords) > 10
    assert attrs["patch_size_level0"] == 512 and attrs["patch_level"] == 1
    assert attrs["patch_size_at_level"] == 256 and attrs["downsample"] == pytest.approx(2.0, abs=0.01)
    assert attrs["level0_magnification"] == pytest.approx(40.0)


def test_generic_tiff_with_nonsense_mpp_fails_clearly(tmp_path):
    row = run_tiling(FIXTURES / "boxes.tiff", tmp_path, "boxes")
    assert_outputs_consistent(tmp_path, "boxes", row)
    assert row["status"] == "failed"
    assert "implausible" in row["reason"] and "352.8" in row["reason"] and "`mpp` column" in row["reason"]


def test_generic_tiff_with_override_tiles_the_coloured_boxes(tmp_path):
    options = {"patch_size": 64, "preset": "biopsy", "min_tissue_area_mm2": 0.001, "thumbnail_mpp": 1.0}
    row = run_tiling(FIXTURES / "boxes.tiff", tmp_path, "boxes", mpp_override=0.5, options=options)
    coords, _ = assert_outputs_consistent(tmp_path, "boxes", row)
    assert row["status"] == "ok" and 4 <= len(coords) <= 12
    with SlideReader(FIXTURES / "boxes.tiff") as reader:
        patches = [reader.read_region_rgb((int(x), int(y)), 0, (64, 64)) for x, y in coords]
    assert all((saturation(patch) > 100).mean() > 0.25 for patch in patches)
    assert row["n_flagged_pen"] >= 1  # the green box is ink-coloured


def test_dicom_pair_opens_and_is_too_small_for_a_patch(tmp_path):
    row = run_tiling(FIXTURES / "boxes_0.dcm", tmp_path, "boxes-dicom")
    assert_outputs_consistent(tmp_path, "boxes-dicom", row)
    assert row["mpp"] == pytest.approx(0.499) and row["mpp_source"] == "openslide.mpp-x"
    assert row["status"] == "no_tissue" and "16x16 px" in row["reason"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("broken.svs", "not a whole-slide image"),
        ("unopenable.tiff", "cannot open"),
        ("unreadable.svs", "cannot be decoded"),
        ("empty.svs", "empty (0 bytes)"),
        ("missing.svs", "file not found"),
    ],
)
def test_bad_files_give_a_named_reason(tmp_path, name, expected):
    slides = tmp_path / "slides"
    slides.mkdir()
    if (FIXTURES / name).exists():
        shutil.copy(FIXTURES / name, slides / name)
    elif name == "empty.svs":
        (slides / name).touch()
    row = run_tiling(slides / name, tmp_path, Path(name).stem)
    coords, attrs = assert_outputs_consistent(tmp_path, Path(name).stem, row)
    assert row["status"] == "failed" and len(coords) == 0
    assert expected in row["reason"] and repr(Path(name).stem) in row["reason"]


def test_read_error_is_raised_after_reopening(tmp_path):
    with SlideReader(FIXTURES / "unreadable.svs", "unreadable") as reader:
        first_handle = reader.slide
        with pytest.raises(SlideError, match="unreadable.*cannot be decoded"):
            reader.read_region_rgb((0, 0), 0, (16, 16))
        assert reader.slide is not first_handle  # reopened before the retry


def test_blank_slide_is_no_tissue(tmp_path):
    slide = tmp_path / "blank.tiff"
    white = np.full((1024, 1024, 3), 250, np.uint8)
    tifffile.imwrite(
        slide, white, tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"
    )
    row = run_tiling(slide, tmp_path, "blank")
    coords, attrs = assert_outputs_consistent(tmp_path, "blank", row)
    assert row["status"] == "no_tissue" and len(coords) == 0 and "no patch" in row["reason"]
    assert attrs["slide_mpp"] == pytest.approx(0.5)


def test_cli_handles_a_path_with_spaces(tmp_path, cmu_tiled):
    folder = tmp_path / "my slides (copy)"
    folder.mkdir()
    slide = folder / "CMU 1 small region.svs"
    shutil.copy(CMU, slide)
    out = tmp_path / "out dir"
    argv = [
        "--slide",
        str(slide),
        "--slide-id",
        "CMU 1",
        "--out-h5",
        str(out / "CMU 1.h5"),
        "--out-qc-json",
        str(out / "CMU 1.qc.json"),
        "--out-png",
        str(out / "qc" / "CMU 1.png"),
        "--options",
        json.dumps({"preset": "resection", "min_tissue_fraction": 0.25}),
    ]
    assert tiling.main(argv) == 0
    row = json.loads((out / "CMU 1.qc.json").read_text())
    coords, _ = assert_outputs_consistent(out, "CMU 1", row)
    assert row["status"] == "ok" and np.array_equal(coords, cmu_tiled[1])


def test_cli_rejects_unknown_option(tmp_path, capsys):
    argv = [
        "--slide",
        str(CMU),
        "--slide-id",
        "x",
        "--out-h5",
        str(tmp_path / "x.h5"),
        "--out-qc-json",
        str(tmp_path / "x.json"),
        "--out-png",
        str(tmp_path / "x.png"),
        "--options",
        '{"patchsize": 128}',
    ]
    assert tiling.main(argv) == 2
    assert "patchsize" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_coords_and_attributes_round_trip(tmp_path):
    coords = np.array([[0, 0], [512, 0], [0, 512]], np.int64)
    attrs = {
        "patch_size": 256,
        "patch_level": 1,
        "downsample": 2.0,
        "slide_mpp": 0.25,
        "mpp_source": "override",
        "status": "ok",
        "reason": "",
    }
    tiling.write_coords_h5(tmp_path / "s.h5", coords, attrs)
    read_back, read_attrs = read_coords(tmp_path / "s.h5")
    assert np.array_equal(read_back, coords) and read_back.dtype == np.int64
    assert read_attrs == attrs
    with h5py.File(tmp_path / "s.h5") as handle:  # CLAM/TRIDENT read the dataset attrs; root has a copy
        assert handle["coords"].attrs["patch_level"] == 1 and handle.attrs["mpp_source"] == "override"


def test_failed_h5_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "s.h5"
    tiling.write_coords_h5(target, np.zeros((1, 2), np.int64), {"status": "ok"})

    def fail_midway(self, *args, **kwargs):
        raise RuntimeError("disk full while writing attributes")

    monkeypatch.setattr(h5py.AttributeManager, "update", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        run_tiling(CMU, tmp_path, "s")
    assert not list(tmp_path.rglob(".tmp-*"))
    monkeypatch.undo()
    coords, attrs = read_coords(target)  # the previous complete version is untouched
    assert coords.shape == (1, 2) and attrs == {"status": "ok"}
    assert not (tmp_path / "s.qc.json").exists()


def test_resolve_mpp_order_and_plausibility():
    tiff_only = {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}
    assert resolve_mpp(tiff_only, slide_id="a") == MppInfo(0.25, "tiff.XResolution")
    assert resolve_mpp({"aperio.MPP": "0.2527", **tiff_only}, slide_id="a").source == "aperio.MPP"
    assert (
        resolve_mpp({"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.5", "aperio.MPP": "0.25"}, slide_id="a").mpp == 0.5
    )
    assert resolve_mpp({"openslide.mpp-x": "352.8"}, slide_id="a", override=0.5).source == "override"
    with pytest.raises(SlideError, match="'a'.*implausible.*`mpp` column"):
        resolve_mpp({"tiff.XResolution": "28.3", "tiff.ResolutionUnit": "centimeter"}, slide_id="a")
    with pytest.raises(SlideError, match="override 0.0 "):
        resolve_mpp({}, slide_id="a", override=0.0)


def test_level_choice_and_coarse_slide_rejection():
    assert level_for_downsample((1.0, 2.0005, 8.0), 2.0) == 1
    assert level_for_downsample((1.0, 4.0, 16.0), 3.9) == 0
    assert level_for_downsample((1.0, 4.0, 16.0), 100.0) == 2
    opts = tiling.resolve_options({})
    assert tiling.patch_geometry(0.25, (1.0, 4.0, 16.0), opts, "a").patch_size_level0 == 512
    with pytest.raises(SlideError, match="coarser than the target"):
        tiling.patch_geometry(1.0, (1.0,), opts, "a")


def test_options_presets_and_overrides():
    biopsy = tiling.resolve_options({"preset": "biopsy"})
    assert biopsy["min_tissue_area_mm2"] == tiling.PRESETS["biopsy"]["min_tissue_area_mm2"]
    assert tiling.resolve_options({"preset": "biopsy", "closing_um": 5.0})["closing_um"] == 5.0
    assert set(tiling.resolve_options(None)) == set(tiling.DEFAULTS)
    with pytest.raises(InputError, match="preset"):
        tiling.resolve_options({"preset": "tcga"})
    with pytest.raises(InputError, match="overlap"):
        tiling.resolve_options({"overlap": 256})


def test_overlap_shrinks_the_stride(tmp_path):
    row = run_tiling(CMU, tmp_path, "cmu-overlap", options={"overlap": 128})
    coords, attrs = read_coords(tmp_path / "cmu-overlap.h5")
    assert attrs["overlap"] == 128 and row["status"] == "ok"
    steps = np.diff(np.unique(coords[:, 0]))
    assert steps.min() == round(128 * 0.5 / 0.499)
