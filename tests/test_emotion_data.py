"""Macro-expression loaders against trees written in the real formats: labels, splits, rules, errors, sampling."""
import logging
import re
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DistributedSampler

from common.cli import main
from common.data import load_samples
from common.data.readers import open_sample
from common.prepare import main as prepare_main
from common.synth.formats.emotion import (write_affectnet, write_affectnet_npy, write_fer2013, write_ferplus,
                                          write_rafdb)
from common.data.sampling import ClassBalancedSampler, balanced_draw
from common.data.sheets import AnnotationError, MissingImageError
from emotion.data import EmotionDataModule
from tests.conftest import TINY_EMOTION

WRITERS = {
    "fer2013": lambda root: write_fer2013(root, per_split=(14, 7, 7)),
    "ferplus": lambda root: write_ferplus(root, per_split=(16, 8, 8)),
    "rafdb": lambda root: write_rafdb(root, per_split=(28, 14), size=32),
    "affectnet": lambda root: write_affectnet(root, per_split=(22, 11), face_size=32),
    "affectnet_npy": lambda root: write_affectnet_npy(root, per_split=(18, 9), size=32),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("emotion")
    return {name: write(base / name) for name, write in WRITERS.items()}


def module(name, written, **kwargs) -> EmotionDataModule:
    defaults = dict(image_size=32, num_workers=0, batch_size=4, num_classes=8)
    data = EmotionDataModule(name, root=str(written.root), **{**defaults, **kwargs})
    data.setup("fit")
    return data


def where(sample_or_record) -> tuple:
    """What identifies a sample: its file, and its row for a FER2013 sheet."""
    return str(sample_or_record.path), sample_or_record.interval


def kept(written):
    return [r for r in written.records if not r.problems]


def members(dataset) -> list:
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    return [(where(part.sample(i)), part.labels[i]) for part in parts for i in range(len(part))]


# ---------------------------------------------------------------- parsers


@pytest.mark.parametrize("name", list(WRITERS))
def test_parser_gives_shared_labels_and_official_splits(trees, name):
    written = trees[name]
    samples = load_samples(name, written.root, task="emotion")
    truth = {where(r): r for r in kept(written)}
    assert sorted(map(where, samples), key=str) == sorted(truth, key=str)
    for sample in samples:
        record = truth[where(sample)]
        assert sample.labels["emotion"] == record.labels["emotion"], (sample.path, record.labels)
        assert sample.extra["split"] == record.extra["split"]
    dropped = [r for r in written.records if r.problems]
    assert bool(dropped) == (name in ("ferplus", "affectnet", "affectnet_npy"))


def test_affectnet_drops_codes_8_to_10_and_logs_the_counts(trees, caplog):
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            samples = load_samples("affectnet", trees["affectnet"].root, task="emotion")
    finally:
        rank_zero.removeHandler(caplog.handler)
    assert {s.labels["emotion"] for s in samples} == set(range(8))
    codes = Counter(r.labels["code"] for r in trees["affectnet"].records if r.extra["split"] == "train")
    assert f"left out {codes[8] + codes[9] + codes[10]} samples" in caplog.text
    assert f"{codes[10]} expression 10 (No-Face)" in caplog.text


def test_affectnet_box_is_kept_for_the_crop(trees):
    samples = {where(s): s for s in load_samples("affectnet", trees["affectnet"].root, task="emotion")}
    for record in kept(trees["affectnet"]):
        assert tuple(samples[where(record)].extra["face_box"]) == record.extra["face_box"]


def test_fer2013_pixels_decode_to_the_written_gray_face(trees):
    sample = load_samples("fer2013", trees["fer2013"].root, task="emotion")[5]
    frame = open_sample(sample).read_numbers([5])[0]
    row = (trees["fer2013"].root / "fer2013.csv").read_text().splitlines()[1 + 5].split(",")
    gray = np.array(row[1].split(), dtype=np.uint8).reshape(48, 48)
    assert frame.shape == (48, 48, 3) and all(np.array_equal(frame[..., c], gray) for c in range(3))


def test_headerless_affectnet_validation_sheet_still_reads(trees, tmp_path):
    root = copy_tree(trees["affectnet"], tmp_path)
    sheet = root / "Manually_Annotated_file_lists" / "validation.csv"
    sheet.write_text("".join(sheet.read_text().splitlines(keepends=True)[1:]))
    tests = [s for s in load_samples("affectnet", root, task="emotion") if s.extra["split"] == "test"]
    assert len(tests) == sum(r.extra["split"] == "test" for r in kept(trees["affectnet"]))


# ---------------------------------------------------------------- errors name the file and the line


def copy_tree(written, tmp_path: Path) -> Path:
    return Path(shutil.copytree(written.root, tmp_path / written.root.name))


def edit_line(path: Path, line: int, change) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = change(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")


def replace_cell(column: int, value: str):
    def change(text: str) -> str:
        cells = text.split(",")
        cells[column] = value
        return ",".join(cells)
    return change


CORRUPTIONS = {
    # name: (dataset, file, line, change, error, message)
    "rafdb extra field": ("rafdb", "EmoLabel/list_patition_label.txt", 3, lambda t: t + " 9", AnnotationError,
                          "expected '<image name> <label>'"),
    "rafdb unknown code": ("rafdb", "EmoLabel/list_patition_label.txt", 4, lambda t: t.split()[0] + " 8",
                           AnnotationError, "not a RAF-DB basic code"),
    "fer2013 short pixels": ("fer2013", "fer2013.csv", 6, lambda t: re.sub(r",(\d+) ", ",", t, count=1),
                             AnnotationError, "pixels must hold 2304"),
    "fer2013 unknown code": ("fer2013", "fer2013.csv", 2, replace_cell(0, "7"), AnnotationError,
                             "emotion code 7"),
    "fer2013 unknown usage": ("fer2013", "fer2013.csv", 9, replace_cell(2, "Validation"), AnnotationError,
                              "Usage 'Validation'"),
    "ferplus bad vote": ("ferplus", "fer2013new.csv", 5, replace_cell(3, "x"), AnnotationError,
                         "happiness 'x' is not an integer"),
    "ferplus misaligned": ("ferplus", "fer2013new.csv", 4, replace_cell(0, "PrivateTest"), AnnotationError,
                           "aligned row for row"),
    "affectnet unknown code": ("affectnet", "Manually_Annotated_file_lists/training.csv", 3,
                               replace_cell(6, "11"), AnnotationError, "expression 11"),
    "affectnet cell count": ("affectnet", "Manually_Annotated_file_lists/validation.csv", 5,
                             lambda t: t + ",0.5", AnnotationError, "cells where the header has 9"),
    "affectnet bad box": ("affectnet", "Manually_Annotated_file_lists/training.csv", 7, replace_cell(3, "wide"),
                          AnnotationError, "face_width 'wide'"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_row_names_file_and_line(trees, tmp_path, case):
    dataset, relative, line, change, error, message = CORRUPTIONS[case]
    root = copy_tree(trees[dataset], tmp_path)
    edit_line(root / relative, line, change)
    with pytest.raises(error) as raised:
        load_samples(dataset, root, task="emotion")
    text = str(raised.value)
    assert f"{root / relative}, line {line}:" in text and message in text, text


@pytest.mark.parametrize("dataset", ["rafdb", "affectnet"])
def test_missing_image_names_sheet_line_and_image(trees, tmp_path, dataset):
    root = copy_tree(trees[dataset], tmp_path)
    record = kept(trees[dataset])[3]
    image = root / record.path.relative_to(trees[dataset].root)
    image.unlink()
    line = record.row + (1 if dataset == "rafdb" else 2)
    with pytest.raises(MissingImageError, match=re.escape(f", line {line}: image {image} not found")):
        load_samples(dataset, root, task="emotion")


def test_affectnet_npy_bad_code_and_missing_image_name_the_file(trees, tmp_path):
    root = copy_tree(trees["affectnet_npy"], tmp_path)
    annotation = root / "train_set" / "annotations" / "10_exp.npy"
    np.save(annotation, np.array("12"))
    with pytest.raises(AnnotationError, match=re.escape(f"{annotation}: expression 12")):
        load_samples("affectnet_npy", root, task="emotion")
    np.save(annotation, np.array(1))
    (root / "train_set" / "images" / "10.jpg").unlink()
    with pytest.raises(MissingImageError, match=re.escape(str(annotation))):
        load_samples("affectnet_npy", root, task="emotion")


# ---------------------------------------------------------------- the data module


def test_ferplus_majority_keeps_only_rows_with_a_majority(trees):
    data = module("ferplus", trees["ferplus"], ferplus_mode="majority")
    truth = {where(r): r for r in kept(trees["ferplus"])}
    for stage_set in (data.train_set, data.val_set, data.test_set):
        for key, label in members(stage_set):
            assert truth[key].labels["majority"] == label
    kept_rows = {key for s in (data.train_set, data.val_set, data.test_set) for key, _ in members(s)}
    assert kept_rows == {key for key, r in truth.items() if r.labels["majority"] is not None}


def test_ferplus_soft_trains_on_vote_shares_and_validates_on_the_argmax(trees):
    data = module("ferplus", trees["ferplus"], ferplus_mode="soft")
    truth = {where(r): r for r in kept(trees["ferplus"])}
    assert len(data.train_set) == sum(r.extra["split"] == "train" for r in truth.values())
    for i in range(len(data.train_set)):
        target = data.train_set[i]["target"]
        expected = truth[where(data.train_set.sample(i))].labels["soft"]
        assert target.dtype == torch.float32 and np.allclose(target.numpy(), expected)
    for i in range(len(data.val_set)):
        item = data.val_set[i]
        label = item["target"]
        assert item["sample"] == data.val_set.sample(i).extra["id"]  # FERPlus names rows by their Image name
        assert isinstance(label, int) and label == truth[where(data.val_set.sample(i))].labels["emotion"]


def test_seven_classes_leave_out_contempt_eight_keep_it(trees):
    seven = module("affectnet", trees["affectnet"], num_classes=7)
    eight = module("affectnet", trees["affectnet"], num_classes=8)
    labels = lambda data: [label for s in (data.train_set, data.val_set, data.test_set) for _, label in members(s)]
    contempt = sum(r.labels["emotion"] == 7 for r in kept(trees["affectnet"]))
    assert contempt > 0 and 7 not in labels(seven) and labels(eight).count(7) == contempt
    assert len(labels(eight)) - len(labels(seven)) == contempt
    assert seven.class_names[-1] == "anger" and eight.class_names[-1] == "contempt"


def test_validation_is_carved_from_training_only_stratified_and_seeded(trees):
    data = module("rafdb", trees["rafdb"], val_fraction=0.25)
    official = {where(r): r.extra["split"] for r in kept(trees["rafdb"])}
    train, val, test = ({key for key, _ in members(s)} for s in (data.train_set, data.val_set, data.test_set))
    assert not train & val and train | val == {k for k, s in official.items() if s == "train"}
    assert test == {k for k, s in official.items() if s == "test"}
    assert Counter(label for _, label in members(data.val_set)) == Counter(range(7))  # one of four per class
    again = module("rafdb", trees["rafdb"], val_fraction=0.25)
    other = module("rafdb", trees["rafdb"], val_fraction=0.25, seed=1)
    assert members(again.val_set) == members(data.val_set) and members(other.val_set) != members(data.val_set)


def test_fer2013_validates_on_public_test(trees):
    data = module("fer2013", trees["fer2013"], val_fraction=0.5)
    usage = {where(r): r.extra["split"] for r in trees["fer2013"].records}
    for stage, dataset in (("train", data.train_set), ("val", data.val_set), ("test", data.test_set)):
        assert {usage[key] for key, _ in members(dataset)} == {stage}
    assert len(data.train_set) == 14


def test_joint_datasets_keep_their_own_label_maps(trees):
    data = EmotionDataModule("rafdb+fer2013", root=[str(trees["rafdb"].root), str(trees["fer2013"].root)],
                             image_size=32, num_workers=0, val_fraction=0.25)
    data.setup("fit")
    assert data.dataset_name == "rafdb+fer2013" and isinstance(data.train_set, ConcatDataset)
    truth = {where(r): r.labels["emotion"] for name in ("rafdb", "fer2013") for r in kept(trees[name])}
    for dataset in (data.train_set, data.val_set, data.test_set):
        assert all(truth[key] == label for key, label in members(dataset))
    assert len(data.test_set) == 14 + 7
    item = data.train_set[len(data.train_set) - 1]  # a FER2013 face, resized like the RAF-DB ones
    image, label = item["input"], item["target"]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and isinstance(label, int)
    assert item["dataset"] == "fer2013" and re.fullmatch(r"fer2013\.csv:\d+", item["sample"])


def test_joint_roots_may_be_named_by_dataset(trees):
    roots = {"fer2013": str(trees["fer2013"].root), "rafdb": str(trees["rafdb"].root)}
    named = EmotionDataModule(root=roots, image_size=32, num_workers=0, val_fraction=0.25)
    listed = EmotionDataModule("fer2013+rafdb", root=list(roots.values()), image_size=32, num_workers=0,
                               val_fraction=0.25)
    for data in (named, listed):
        data.setup("fit")
    assert named.datasets == ["fer2013", "rafdb"]
    assert members(named.test_set) == members(listed.test_set)
    reordered = EmotionDataModule("rafdb+fer2013", root=roots, image_size=32, num_workers=0)
    assert reordered.sources == [Path(roots["rafdb"]), Path(roots["fer2013"])]
    with pytest.raises(ValueError, match=r"\['affectnet'\]"):
        EmotionDataModule("rafdb", root={"rafdb": "a", "affectnet": "b"})


def test_joint_soft_and_hard_targets_share_one_format(trees):
    data = EmotionDataModule(["rafdb", "ferplus"], root=[str(trees["rafdb"].root), str(trees["ferplus"].root)],
                             image_size=32, num_workers=0, batch_size=4, ferplus_mode="soft", num_classes=8)
    data.setup("fit")
    target = data.train_set[0]["target"]  # a RAF-DB sample, one-hot
    assert target.shape == (8,) and target.sum() == 1 and int(target.argmax()) == data.train_set.datasets[0].labels[0]
    batch = next(iter(data.train_dataloader()))
    assert batch["input"].shape[1:] == (3, 32, 32) and batch["target"].shape == (4, 8)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown"):
        EmotionDataModule("casme2", root="x")
    with pytest.raises(ValueError, match="one entry per dataset"):
        EmotionDataModule("rafdb+fer2013", root=["a"])
    with pytest.raises(ValueError, match="--data.root"):
        EmotionDataModule("rafdb")
    with pytest.raises(ValueError, match="ferplus_mode"):
        EmotionDataModule("ferplus", root="x", ferplus_mode="probability")


def test_cache_gives_the_samples_of_the_raw_root(trees, tmp_path):
    cache = tmp_path / "rafdb_cache"
    assert prepare_main(["--task", "emotion", "--dataset", "rafdb", "--root", str(trees["rafdb"].root), "--out",
                         str(cache), "--size", "32", "--margin", "0", "--detector", "none", "--workers", "0"]) == 0
    raw = module("rafdb", trees["rafdb"])
    cached = EmotionDataModule("rafdb", cache=str(cache), image_size=48, num_workers=0, num_classes=8)
    cached.setup("fit")
    for a, b in ((raw.train_set, cached.train_set), (raw.val_set, cached.val_set), (raw.test_set, cached.test_set)):
        assert [(Path(k[0]).name, label) for k, label in members(a)] == \
               [(Path(k[0]).name, label) for k, label in members(b)]
    assert cached.test_set[0]["input"].shape == (3, 48, 48)  # a 32 px cache, resized to the size asked for
    # sample ids are paths relative to the dataset root, the same from the raw root and from the cache
    assert [raw.test_set[i]["sample"] for i in range(3)] == [cached.test_set[i]["sample"] for i in range(3)]
    assert raw.test_set[0]["sample"].startswith("Image/aligned/test_")


# ---------------------------------------------------------------- balanced sampling


def test_balanced_sampler_balances_classes():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 8 + [3] * 2)
    sampler = ClassBalancedSampler(labels, seed=3)
    counts = Counter(labels[list(sampler)].tolist())
    assert len(sampler) == 100 and max(counts.values()) - min(counts.values()) <= 1
    majority = [i for i in sampler if labels[i] == 0]
    assert len(majority) == len(set(majority)), "an oversupplied class is drawn without repeats"
    sampler.set_epoch(1)
    assert list(sampler) != list(ClassBalancedSampler(labels, seed=3))


def test_balanced_sampler_shards_ranks_without_overlap():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 8 + [3] * 3)
    ranks = [ClassBalancedSampler(labels, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    draws = [list(s) for s in ranks]
    assert len(draws[0]) == len(draws[1]) == 51
    whole = balanced_draw(labels, 102, np.random.default_rng([5, 4]))
    assert np.array_equal(np.stack(draws, 1).reshape(-1), whole), "rank r takes every second draw of one sequence"
    majority = [set(i for i in d if labels[i] == 0) for d in draws]
    assert not majority[0] & majority[1]
    counts = Counter(labels[draws[0] + draws[1]].tolist())
    assert max(counts.values()) - min(counts.values()) <= 1
    # Lightning's use_distributed_sampler leaves a DistributedSampler in place instead of wrapping it
    assert isinstance(ranks[0], DistributedSampler)


def test_data_module_shards_the_balanced_sampler_by_trainer_rank(trees):
    data = module("affectnet", trees["affectnet"], balanced_sampler=True)
    data.trainer = SimpleNamespace(world_size=2, global_rank=1)
    sampler = data.train_dataloader().sampler
    assert isinstance(sampler, ClassBalancedSampler) and (sampler.num_replicas, sampler.rank) == (2, 1)
    assert len(sampler) == -(-len(data.train_set) // 2)


# ---------------------------------------------------------------- training from the command line

CLI_RUNS = {
    "fer2013": [],
    "ferplus": ["--data.ferplus_mode", "soft", "--model.mixup_alpha", "0.2", "--model.cutmix_alpha", "1.0"],
    "rafdb": ["--data.balanced_sampler", "true"],
    "affectnet": ["--data.num_classes", "8"],
    "affectnet_npy": [],
}


@pytest.mark.parametrize("name", list(CLI_RUNS))
def test_fast_dev_run_on_each_format(trees, tmp_path, name):
    cli = main(["--task", "emotion", "fit", *TINY_EMOTION, "--data.dataset", name, "--data.root",
                str(trees[name].root), *CLI_RUNS[name], "--trainer.fast_dev_run", "true", "--run.root", str(tmp_path),
                "--run.wandb", "false"])
    assert cli.trainer.global_step == 1 and cli.datamodule.datasets == [name]
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
