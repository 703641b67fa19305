"""Label maps are data: common/labels.yaml holds every scheme and dataset code map, read by name."""
import pytest
import yaml

import common.labels as labels
from common.synth import EMOTIONS
from emotion.parsers import AFFECTNET_DROPPED, EMOTION_CLASSES, FER2013_TO_SHARED, RAFDB_TO_SHARED


def test_one_emotion_order_for_generator_and_loaders():
    assert list(EMOTIONS) == list(EMOTION_CLASSES) == labels.class_names("emotion")
    assert labels.class_names("emotion7") == labels.class_names("emotion")[:7]


def test_dataset_codes_map_by_name_into_the_scheme():
    order = labels.class_names("emotion")
    assert {code: order[i] for code, i in RAFDB_TO_SHARED.items()} == labels.code_names("rafdb")
    assert order[FER2013_TO_SHARED[0]] == "anger" and order[FER2013_TO_SHARED[6]] == "neutral"
    assert labels.code_map("affectnet", "emotion7") == {c: i for c, i in labels.code_map("affectnet").items() if i < 7}
    assert AFFECTNET_DROPPED == {8: "None", 9: "Uncertain", 10: "No-Face"}


def test_unknown_names_and_a_broken_file_fail_loudly(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="casme9"):
        labels.code_map("casme9")
    with pytest.raises(KeyError, match="no_scheme"):
        labels.class_names("no_scheme")
    table = yaml.safe_load(labels.LABELS_FILE.read_text())
    table["datasets"]["rafdb"]["codes"][7] = "neutrall"
    broken = tmp_path / "labels.yaml"
    broken.write_text(yaml.safe_dump(table))
    monkeypatch.setattr(labels, "LABELS_FILE", broken)
    labels._table.cache_clear()
    try:
        with pytest.raises(ValueError, match="neutrall"):
            labels.code_map("rafdb")
    finally:
        labels._table.cache_clear()
