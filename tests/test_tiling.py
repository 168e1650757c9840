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
from ghanet_workflow.slides import MppInfo, SlideReader, level_for_downsample, resolve_mpp, rgba_to_rgb_on_white

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


# ----------------------------------------------------------------------------- speed levers (issue 16)


@pytest.mark.parametrize(
    ("slide", "mpp", "preset", "patches", "pen", "background"),
    [
        (CMU, None, "resection", 39, 2, 7),
        (CMU, None, "biopsy", 39, 2, 9),
        (TCGA_NO_MPP, 0.2527, "resection", 43, 0, 5),  # the frozen section, with the demo table's mpp
        (TCGA_NO_MPP, 0.2527, "biopsy", 43, 0, 5),
    ],
)
def test_real_slides_keep_their_patches_and_flags(tmp_path, slide, mpp, preset, patches, pen, background):
    """The counts before the speed work; both slides are small, so their mask stays at 4 µm/px."""
    row = run_tiling(slide, tmp_path, "s", mpp_override=mpp, options={"preset": preset})
    assert row["status"] == "ok" and row["mask_mpp"] == pytest.approx(4.0, rel=0.01)
    found = (row["n_patches"], row["n_flagged_pen"], row["n_flagged_blur"], row["n_flagged_background"])
    assert found == (patches, pen, 0, background)


def test_coarser_native_level_only_when_no_level_matches():
    assert tiling.coarser_native_level((1.0, 4.0, 16.0, 64.0), 16.0, 32.0) is None  # 40x at 0.25: 4 µm/px level
    assert tiling.coarser_native_level((1.0, 2.0, 4.0, 8.0), 8.0, 16.0) is None  # a demo slide: 4 µm/px level
    assert tiling.coarser_native_level((1.0, 2.0005), 15.83, 31.66) is None  # the frozen section: resampled
    assert tiling.coarser_native_level((1.0, 4.0, 15.9957, 63.94), 8.0, 16.0) == 2  # 20x at 0.5: 8 µm/px level
    assert tiling.coarser_native_level((1.0, 4.0, 32.0), 8.0, 16.0) is None  # 16 µm/px is coarser than allowed
    assert tiling.coarser_native_level((1.0, 3.0, 12.0, 24.0), 8.0, 16.0) == 2  # the finest acceptable one


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float, downsamples: tuple[int, ...]) -> Path:
    """Tiled JPEG TIFF pyramid of ``rgb`` (OpenSlide generic-tiff) with MPP in the resolution tags."""
    with tifffile.TiffWriter(path) as tif:
        for ds in downsamples:
            size = (-(-rgb.shape[1] // ds), -(-rgb.shape[0] // ds))
            level = rgb if ds == 1 else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            tif.write(
                level, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                resolution=(1e4 / (mpp * ds),) * 2, resolutionunit="CENTIMETER", subfiletype=1 if ds > 1 else 0,
            )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def cmu_20x_pyramid(tmp_path_factory) -> Path:
    """The CMU-1 crop as a 20x slide with levels 1/4/16 (0.5, 2 and 8 µm/px), like a scanner writes."""
    with SlideReader(CMU) as reader:
        rgb = reader.read_region_rgb((0, 0), 0, reader.slide.dimensions)
    return write_pyramid(tmp_path_factory.mktemp("pyramid") / "cmu20x.tiff", rgb, 0.5, (1, 4, 16))


def test_small_20x_slide_keeps_the_fine_mask(tmp_path, cmu_20x_pyramid):
    row = run_tiling(cmu_20x_pyramid, tmp_path, "small")
    coords, _ = read_coords(tmp_path / "small.h5")
    assert row["mask_mpp"] == pytest.approx(4.0, rel=0.01)  # its 2 µm/px level is small: resampled, as before
    assert (row["n_patches"], row["n_flagged_pen"]) == (39, 2)
    forced = run_tiling(cmu_20x_pyramid, tmp_path, "fine", options={"thumbnail_max_mpp": 4.0})
    assert np.array_equal(read_coords(tmp_path / "fine.h5")[0], coords) and forced["mask_mpp"] == row["mask_mpp"]


def test_large_20x_slide_takes_its_8um_level_as_the_mask(tmp_path, cmu_20x_pyramid, monkeypatch):
    """What a large 20x slide does (here the small one, with the size gate lowered): the mask is its 8 µm/px
    level read as is. The reason the gate exists: on this small crop the coarser mask drops 3 of the 39
    border patches (thin strands fade, two pale holes stay holes) and the thin teal dye line (2 pen flags)."""
    fine = run_tiling(cmu_20x_pyramid, tmp_path, "fine")
    monkeypatch.setattr(tiling, "FINE_READ_MAX_PX", 0)
    coarse = run_tiling(cmu_20x_pyramid, tmp_path, "coarse")
    assert fine["mask_mpp"] == pytest.approx(4.0, rel=0.01) and coarse["mask_mpp"] == pytest.approx(8.0, rel=0.01)
    fine_set = {tuple(c) for c in read_coords(tmp_path / "fine.h5")[0]}
    coarse_set = {tuple(c) for c in read_coords(tmp_path / "coarse.h5")[0]}
    assert coarse_set <= fine_set and len(coarse_set) >= 0.9 * len(fine_set)
    assert coarse["tissue_area_mm2"] == pytest.approx(fine["tissue_area_mm2"], rel=0.15)
    assert coarse["n_flagged_blur"] == 0
    picture = cv2.imread(str(tmp_path / "qc" / "coarse.png"))
    assert picture is not None and max(picture.shape[:2]) >= 800  # upscaled like any small thumbnail


def test_box_sums_equal_an_integral_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400)).astype(np.uint8)
    x0, y0 = rng.integers(0, 380, 500), rng.integers(0, 280, 500)
    boxes = tiling.ThumbBoxes(x0, y0, x0 + rng.integers(1, 20, 500), y0 + rng.integers(1, 20, 500))  # overlapping
    integral = cv2.integral(image, sdepth=cv2.CV_64F)
    expected = integral[boxes.y1, boxes.x1] - integral[boxes.y0, boxes.x1] - integral[boxes.y1, boxes.x0]
    expected += integral[boxes.y0, boxes.x0]
    assert np.array_equal(tiling.box_sums(image, boxes), expected.astype(np.int64))
    laplacian = cv2.Laplacian(image, cv2.CV_16S)
    sums, squares = cv2.integral2(laplacian.astype(np.float32), sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)

    def corners(table):
        return (
            table[boxes.y1, boxes.x1]
            - table[boxes.y0, boxes.x1]
            - table[boxes.y1, boxes.x0]
            + table[boxes.y0, boxes.x0]
        )

    assert np.array_equal(tiling.box_sums(laplacian, boxes, np.float64), corners(sums))
    assert np.array_equal(tiling.box_sums(laplacian, boxes, np.float64, squared=True), corners(squares))
    assert tiling.box_sums(image, boxes.subset(np.zeros(500, bool))).shape == (0,)


def test_rgb_read_into_numpy_equals_read_region_on_white(monkeypatch):
    from types import SimpleNamespace

    from ghanet_workflow import slides

    with SlideReader(TCGA_NO_MPP) as reader:
        width, height = reader.slide.level_dimensions[1]
        region = ((0, 0), 1, (width + 40, height + 9))  # past the edge: transparent, composited to white
        expected = rgba_to_rgb_on_white(np.asarray(reader.slide.read_region(*region)))
        fast = reader.read_region_rgb(*region)
        monkeypatch.setattr(slides, "sys", SimpleNamespace(byteorder="big"))  # the fallback: read_region + PIL
        assert np.array_equal(fast, expected) and np.array_equal(reader.read_region_rgb(*region), expected)
    assert (fast[:, width:] == 255).all()
