import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Under pytest-xdist the workers share the cores: one thread each (the processes tests start inherit it), instead of
# every worker's OpenMP pool spinning on every core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):
        os.environ.setdefault(variable, "1")
    import torch

    torch.set_num_threads(1)

# Tiny emotion runs: 64 px synthetic faces, a handful of identities, no worker processes.
TINY_EMOTION = [
    "--data.image_size", "64", "--data.subjects", "[2, 1, 1]", "--data.per_subject", "8",
    "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


@pytest.fixture(autouse=True)
def _offline_tracking(monkeypatch, tmp_path):
    """No test may reach W&B or read the developer's credentials."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("FACEX_RUN_DIR", raising=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for CPU-heavy tests: on two shared cores, OpenMP workers waiting on each other make
    them several times slower, not faster."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def exported_metadata(path, task: str) -> dict[str, str]:
    """Check an exported model with the contract's check (the runtime's); return its metadata."""
    from common.contract import check_file

    info = check_file(path)
    assert info.task == task, f"{path} is a {info.task} model, not {task}"
    return info.metadata


def metadata_of(path) -> dict[str, str]:
    """An ONNX file's metadata, unchecked (for models a test builds outside the contract on purpose)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def run_train(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """train.py in a subprocess, as a user runs it (DDP relaunches need a real command line); None unsets a variable."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def megc(tmp_path_factory):
    """Trees of CASME II, SAMM and SMIC-HS holding exactly the clips of the official MEGC2019 composite list."""
    from common.synth.formats import real_annotations
    from common.synth.formats.microexp import write_megc2019

    annotations = real_annotations()
    if annotations is None:
        pytest.skip("public annotation sheets not found")
    gt = annotations / "megc2019_combined_3class_gt.csv"
    return write_megc2019(tmp_path_factory.mktemp("megc2019"), gt), gt


def megc_roots(written) -> dict[str, str]:
    return {db: str(written.root / db) for db in ("casme2", "samm", "smic")}
