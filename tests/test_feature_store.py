"""Feature store: same training as in-memory bags, staleness and damage detected and repacked."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
from test_train import FAST, GROUP_SIZES, IN_DIM, Killed, kill_after, write_cohort

from ghanet_workflow import feature_store, memory
from ghanet_workflow.cohort import load_built_cohort
from ghanet_workflow.errors import InputError
from ghanet_workflow.fold import load_bags, read_bag
from ghanet_workflow.train import Case, model_config, predict, resolve_options, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: bags of 3..79 rows (1-2 slides of 3..39): max_patches 6 takes all rows of some bags, a dense
#: subsample of others and a sparse (row-run) read of the largest
OPTIONS = {**FAST, "max_patches": 6}


@pytest.fixture
def built(tmp_path):
    write_cohort(tmp_path, n_patients=24, seed=5)
    cohort_dir = tmp_path / "cohort"
    return cohort_dir, load_built_cohort(cohort_dir)


def labelled(cohort, bags) -> dict[str, Case]:
    genes = [torch.full((n,), float(i)) for i, n in enumerate(GROUP_SIZES)]
    months = cohort.patients["survival_months"]
    return {
        case_id: Case(
            bags[case_id], genes, label=int(months[case_id] // 30) % 4, censorship=float(cohort.patients.loc[case_id, "censorship"]), time=float(months[case_id])
        )
        for case_id in bags
    }


def test_the_same_seed_gives_the_same_weights_and_predictions_as_in_memory_bags(built, tmp_path):
    cohort_dir, cohort = built
    ids = list(cohort.patients.index)
    store = feature_store.open_store(cohort, cohort_dir)
    in_memory = labelled(cohort, load_bags(cohort, ids))
    stored = labelled(cohort, store.bags(ids))
    assert max(c.features.shape[0] for c in stored.values()) > 4 * OPTIONS["max_patches"]  # the sparse read is used
    config = model_config(resolve_options(OPTIONS), IN_DIM, GROUP_SIZES, 4)
    train_ids, val_ids = ids[:18], ids[18:]
    results = [
        train("ghanet", config, {c: cases[c] for c in train_ids}, {c: cases[c] for c in val_ids}, tmp_path / name, OPTIONS)
        for name, cases in (("memory", in_memory), ("store", stored))
    ]
    memory_state, store_state = (r.model.state_dict() for r in results)
    assert all(torch.equal(memory_state[k], store_state[k]) for k in memory_state)
    assert results[0].log.drop(columns="seconds").equals(results[1].log.drop(columns="seconds"))
    assert predict(results[0].model, in_memory).equals(predict(results[1].model, stored))


def test_a_killed_run_on_the_store_resumes_to_the_uninterrupted_result(built, tmp_path):
    cohort_dir, cohort = built
    ids = list(cohort.patients.index)
    cases = labelled(cohort, feature_store.open_store(cohort, cohort_dir).bags(ids))
    config = model_config(resolve_options(OPTIONS), IN_DIM, GROUP_SIZES, 4)
    train_cases, val_cases = {c: cases[c] for c in ids[:18]}, {c: cases[c] for c in ids[18:]}
    whole = train("ghanet", config, train_cases, val_cases, tmp_path / "whole", OPTIONS)
    with pytest.raises(Killed):
        train("ghanet", config, train_cases, val_cases, tmp_path / "killed", OPTIONS, on_epoch_end=kill_after(1))
    resumed = train("ghanet", config, train_cases, val_cases, tmp_path / "killed", OPTIONS)
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in whole.model.state_dict().items())


def test_bags_read_from_the_store_are_the_per_slide_features(built):
    cohort_dir, cohort = built
    store = feature_store.open_store(cohort, cohort_dir)
    for case_id in cohort.patients.index:
        expected = read_bag(cohort.feature_paths(case_id), case_id)
        bag = store.bag(case_id)
        assert bag.shape == tuple(expected.shape)
        assert torch.equal(bag.load(), expected)
        rows = torch.tensor([bag.shape[0] - 1, 0, bag.shape[0] // 2])
        assert torch.equal(bag[rows], expected[rows])  # few rows: read run by run, in the asked order


def test_float16_store_holds_the_features_rounded_to_float16(built):
    cohort_dir, cohort = built
    index = feature_store.ensure_store(cohort, feature_store.store_dir(cohort_dir), "float16")
    assert index["dtype"] == "float16"
    data = feature_store.store_dir(cohort_dir) / index["data_file"]
    assert data.stat().st_size == index["rows"] * IN_DIM * 2
    store = feature_store.open_store(cohort, cohort_dir)  # a reader without a dtype takes the packed one
    case_id = cohort.patients.index[3]
    expected = read_bag(cohort.feature_paths(case_id), case_id).half().float()
    assert torch.equal(store.bag(case_id).load(), expected)


def rewrite_first_slide(cohort, case_id) -> np.ndarray:
    path = cohort.feature_paths(case_id)[0]
    new = np.full((7, IN_DIM), 3.5, dtype="f4")
    with h5py.File(path, "w") as handle:
        handle["features"] = new
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse-mtime file system still sees it
    return new


def damage_truncate(directory, index):
    with open(directory / index["data_file"], "r+b") as handle:
        handle.truncate(index["data_size"] - 4)


def damage_index(directory, index):
    (directory / "index.json").write_text('{"format": 1, "dtype": ')


def damage_data_rewritten(directory, index):
    path = directory / index["data_file"]
    with open(path, "r+b") as handle:
        handle.write(b"\0" * 16)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def damage_data_removed(directory, index):
    (directory / index["data_file"]).unlink()


@pytest.mark.parametrize("damage", [damage_truncate, damage_index, damage_data_rewritten, damage_data_removed])
def test_a_damaged_store_is_detected_and_repacked(built, damage):
    cohort_dir, cohort = built
    directory = feature_store.store_dir(cohort_dir)
    index = feature_store.ensure_store(cohort, directory)
    damage(directory, index)
    assert feature_store.store_problem(directory, feature_store.read_index(directory), feature_store.cohort_sources(cohort), None)
    repacked = feature_store.open_store(cohort, cohort_dir)
    assert repacked.index["data_file"] != index["data_file"]
    assert [p.name for p in directory.glob("features-*")] == [repacked.index["data_file"]]
    case_id = cohort.patients.index[0]
    assert torch.equal(repacked.bag(case_id).load(), read_bag(cohort.feature_paths(case_id), case_id))


def test_a_changed_slide_file_or_slide_set_makes_the_store_stale(built):
    cohort_dir, cohort = built
    directory = feature_store.store_dir(cohort_dir)
    first = feature_store.ensure_store(cohort, directory)
    assert feature_store.ensure_store(cohort, directory)["data_file"] == first["data_file"]  # valid: kept
    case_id = cohort.patients.index[1]  # two slides
    new = rewrite_first_slide(cohort, case_id)
    store = feature_store.open_store(cohort, cohort_dir)
    assert store.index["data_file"] != first["data_file"]
    assert torch.equal(store.bag(case_id).load()[:7], torch.from_numpy(new))
    cohort.slides.loc[cohort.slides["features_path"] == cohort.feature_paths(case_id)[1], "used"] = False
    assert "slides changed" in feature_store.store_problem(directory, store.index, feature_store.cohort_sources(cohort), None)
    assert feature_store.open_store(cohort, cohort_dir).bag(case_id).shape == (7, IN_DIM)


def test_a_patient_without_usable_slides_and_mixed_dimensions_are_reported(built):
    cohort_dir, cohort = built
    case_id = cohort.patients.index[0]
    cohort.slides.loc[cohort.slides["case_id"] == case_id, "used"] = False
    store = feature_store.open_store(cohort, cohort_dir)
    with pytest.raises(InputError, match=f"patient {case_id} has no usable slide"):
        store.bag(case_id)
    other = cohort.feature_paths(cohort.patients.index[2])[0]
    with h5py.File(other, "w") as handle:
        handle["features"] = np.zeros((4, IN_DIM + 1), dtype="f4")
    with pytest.raises(InputError, match="same encoder"):
        feature_store.open_store(cohort, cohort_dir)


def test_pack_features_command_writes_the_index(built):
    cohort_dir, cohort = built
    from ghanet_workflow.cli import main

    assert main(["pack-features", "--cohort-dir", str(cohort_dir), "--dtype", "float16"]) == 0
    index = json.loads((feature_store.store_dir(cohort_dir) / "index.json").read_text())
    assert index["dtype"] == "float16" and set(index["cases"]) == set(cohort.patients.index)
    assert index["largest_bag"] == max(read_bag(cohort.feature_paths(c), c).shape[0] for c in cohort.patients.index)


# ----------------------------------------------------------------------------- memory estimates


def test_the_parameter_bound_covers_every_model():
    from ghanet_workflow.model import build_model

    for in_dim, hidden, groups in ((1024, 512, [50] * 6), (1536, 256, [3, 400, 20]), (16, 32, [3, 5, 4])):
        config = {"in_dim": in_dim, "group_sizes": groups, "n_bins": 4, "hidden_dim": hidden, "n_heads": 4, "dropout": 0.25, "topk_ratio": 0.2}
        counts = {name: sum(p.numel() for p in build_model(name, dict(config)).parameters()) for name in ("ghanet", "abmil", "snn", "abmil_snn")}
        bound = memory.model_params_bound(in_dim, hidden, groups)
        assert max(counts.values()) <= bound <= 1.3 * counts["ghanet"], (counts, bound)


def test_encoder_sizes_are_those_of_the_registry():
    import timm

    from ghanet_workflow.encoders import ENCODERS

    assert set(memory.ENCODER_SIZES) == set(ENCODERS)
    for name, spec in ENCODERS.items():
        with torch.device("meta"):  # no weights allocated
            model = timm.create_model(spec.architecture, pretrained=False, **dict(spec.timm_kwargs))
            model = spec.modify(model) if spec.modify else model
        assert memory.ENCODER_SIZES[name] == (sum(p.numel() for p in model.parameters()), spec.feature_dim, spec.input_size)


def test_training_estimate_follows_the_largest_bag_and_not_the_number_of_patients(built):
    cohort_dir, cohort = built
    assert memory.training_mem_mb_from_files(cohort_dir, FAST) is None  # not packed yet: the caller's constant
    genomic = memory.training_mem_mb_from_files(cohort_dir, FAST, reads_slides=False)  # snn, coxnet: no store
    assert genomic == memory.training_mem_mb(0, 0, memory.model_params_bound(0, FAST["hidden_dim"], [4, 3, 4]), 24, 32)
    index = feature_store.ensure_store(cohort, feature_store.store_dir(cohort_dir))
    estimate = memory.training_mem_mb_from_files(cohort_dir, FAST)
    bound = memory.model_params_bound(IN_DIM, FAST["hidden_dim"], [4, 3, 4])  # write_cohort's GROUPS
    assert estimate == memory.training_mem_mb(index["largest_bag"], IN_DIM, bound, FAST["max_patches"], FAST["hidden_dim"])
    big = dict(largest_bag=100_000, dim=1536, n_params=20_000_000, max_patches=4096, hidden_dim=512)
    assert memory.training_mem_mb(**big, store_itemsize=2) < memory.training_mem_mb(**big)
    assert memory.training_mem_mb(**{**big, "largest_bag": 200_000}) > memory.training_mem_mb(**big)
    # 100,000 patches of 1536-d: the whole bag read in float32 plus the evaluation pass, a few GB
    assert 2_000 < memory.training_mem_mb(**big) < 8_000


def test_a_training_fold_peaks_under_its_estimate(built, tmp_path):
    import subprocess
    import sys

    cohort_dir, cohort = built
    patients = list(cohort.patients.index)
    pd_rows = [{"case_id": c, "split": "train" if i < 16 else ("val" if i < 20 else "test")} for i, c in enumerate(patients)]
    import pandas as pd

    pd.DataFrame(pd_rows).to_csv(tmp_path / "fold_0.csv", index=False)
    options = json.dumps({"training": {**FAST, "epochs": 2}, "genomics": {"pvalue_threshold": 1.0, "min_genes_per_group": 1}})
    code = (
        "import resource, sys; from ghanet_workflow.cli import main; main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"  # kB on Linux
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "train", "--cohort-dir", str(cohort_dir), "--fold-csv", str(tmp_path / "fold_0.csv"),
         "--model", "ghanet", "--out-dir", str(tmp_path / "out"), "--threads", "1", "--options", options],
        check=True, capture_output=True, text=True,
    )
    assert (tmp_path / "out" / "model.pt").is_file()
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert peak_mb <= memory.training_mem_mb_from_files(cohort_dir, FAST)


def test_extraction_estimate_reads_the_chunk_coords(tmp_path):
    paths = []
    for n in (10, 5000):
        paths.append(tmp_path / f"s{n}.h5")
        with h5py.File(paths[-1], "w") as handle:
            handle.create_dataset("coords", data=np.zeros((n, 2), dtype=np.int64))
    options = {"encoder": "uni2_h", "batch_size": 64, "num_workers": 2, "prefetch_factor": 4}
    estimate = memory.extraction_mem_mb_from_files(paths, options)
    assert estimate >= memory.extraction_mem_mb(5000, "uni2_h", 64, 2, 4)  # the size over-counts rows, never under
    assert estimate > memory.extraction_mem_mb_from_files(paths[:1], options)
    assert memory.extraction_mem_mb_from_files([tmp_path / "absent.h5"], options) is None


def test_the_cohort_goes_to_the_gpu_only_when_asked_and_with_room(built):
    cohort_dir, cohort = built
    bags = feature_store.open_store(cohort, cohort_dir).bags(list(cohort.patients.index))
    for setting in ("never", "auto", "always"):
        assert feature_store.hold_on_device(bags, torch.device("cpu"), setting) is bags  # a CPU job reads the store
    assert feature_store.fits_on_device(50 * 2**30, 139 * 2**30)  # BLCA-size float32 bags on an H200
    assert not feature_store.fits_on_device(90 * 2**30, 139 * 2**30)  # a 1,000-patient UNI cohort: from the store
    with pytest.raises(InputError, match="cohort_on_gpu"):
        resolve_options({"cohort_on_gpu": "yes"})
