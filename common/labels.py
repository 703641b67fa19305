"""Label maps as data: class schemes and dataset codes live in `labels.yaml` beside this file.

    class_names("emotion")          -> ['neutral', 'happy', ...]
    code_map("rafdb")               -> {1: 3, 2: 4, ...}   (dataset code -> index in the dataset's scheme)
    left_out_codes("affectnet")     -> {8: 'None', 9: 'Uncertain', 10: 'No-Face'}
    word_map("megc2019", "samm")    -> {'anger': 0, 'contempt': 0, ..., 'happiness': 1, 'surprise': 2}
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

LABELS_FILE = Path(__file__).with_name("labels.yaml")


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    with open(LABELS_FILE, encoding="utf-8") as handle:
        table = yaml.safe_load(handle)
    _check(table)
    return table


def _check(table: dict) -> None:
    """A typo in the file must fail loudly on first use, not mislabel a dataset."""
    schemes = table["schemes"]
    for name, entry in table["datasets"].items():
        classes = schemes.get(entry["scheme"])
        if classes is None:
            raise ValueError(f"{LABELS_FILE}: dataset {name} names unknown scheme {entry['scheme']!r}")
        unknown = sorted(set(entry["codes"].values()) - set(classes))
        if unknown:
            raise ValueError(f"{LABELS_FILE}: dataset {name} maps to {unknown}, not classes of {entry['scheme']}")
    for scheme, per_dataset in (table.get("groupings") or {}).items():
        if scheme not in schemes:
            raise ValueError(f"{LABELS_FILE}: groupings name unknown scheme {scheme!r}")
        for dataset, classes in per_dataset.items():
            unknown = sorted(set(classes) - set(schemes[scheme]))
            if unknown:
                raise ValueError(f"{LABELS_FILE}: grouping {scheme}/{dataset} names {unknown}, not classes of {scheme}")


def schemes() -> list[str]:
    return sorted(_table()["schemes"])


def class_names(scheme: str) -> list[str]:
    try:
        return list(_table()["schemes"][scheme])
    except KeyError:
        raise KeyError(f"unknown class scheme {scheme!r}; {LABELS_FILE} defines {schemes()}") from None


def _dataset(dataset: str) -> dict:
    try:
        return _table()["datasets"][dataset]
    except KeyError:
        raise KeyError(f"no label map for dataset {dataset!r} in {LABELS_FILE}") from None


def code_names(dataset: str) -> dict:
    """Dataset code -> class name, in the file's order."""
    return dict(_dataset(dataset)["codes"])


def code_map(dataset: str, scheme: str | None = None) -> dict:
    """Dataset code -> index in `scheme` (by default the dataset's own scheme). Codes whose class the scheme
    lacks are absent, so a caller can tell "left out at this setting" from "unknown code"."""
    classes = class_names(scheme or _dataset(dataset)["scheme"])
    return {code: classes.index(name) for code, name in code_names(dataset).items() if name in classes}


def left_out_codes(dataset: str) -> dict:
    return dict(_dataset(dataset).get("left_out") or {})


def word_map(scheme: str, dataset: str) -> dict[str, int]:
    """A dataset's emotion word (lower case) -> class index in `scheme`; words of no class are absent."""
    classes = class_names(scheme)
    groupings = (_table().get("groupings") or {}).get(scheme)
    if groupings is None:
        raise KeyError(f"scheme {scheme!r} groups no dataset words in {LABELS_FILE}")
    per_dataset = groupings.get(dataset, groupings.get("*"))
    if per_dataset is None:
        raise KeyError(f"scheme {scheme!r} has no classes for dataset {dataset!r}; it covers {sorted(groupings)}")
    return {str(word).lower(): classes.index(name) for name, words in per_dataset.items() for word in words}


def schemes_for(dataset: str) -> list[str]:
    """The schemes that can label a dataset's samples."""
    groupings = _table().get("groupings") or {}
    return sorted(s for s, per in groupings.items() if dataset in per or "*" in per)


def au_set(name: str) -> list[int]:
    """The AU numbers of a named set (output order)."""
    sets = _table().get("au_sets") or {}
    if name not in sets:
        raise KeyError(f"unknown AU set {name!r}; {LABELS_FILE} defines {sorted(sets)}")
    return [int(au) for au in sets[name]]


def au_standard(dataset: str) -> list[int]:
    """The AUs a dataset's results are usually reported on (BP4D 12, DISFA 8)."""
    return au_set(_table()["au_standard"][dataset])


def au_name(au: int) -> str:
    """OpenFace's spelling: AU01."""
    return f"AU{int(au):02d}"
