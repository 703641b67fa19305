"""A model handle that serves predictions from an ONNX Runtime session and follows its file.

    model = Model("models/emotion.onnx", watch=True)
    out = model.predict(image)            # {"probs": array}
    model.status                          # what is serving, what was refused and why

Hot reload: a watcher thread polls the file (size, modification time, inode). When it changes, the watcher waits
until the file has stopped changing (a copy or an in-place write in progress), then loads it in the background,
checks it against the contract (runtime.check: structure, labels, a probe run) and requires the same task as the
model serving now. Only then is the new session swapped in: a single reference assignment between two calls, so no
call fails and none waits for a load. A partial, corrupt or contract-breaking file is refused: the old model keeps
serving, the refusal is logged and kept in `status["refused"]`; the same bytes are not tried again until the file
changes once more. `reload()` does the same at once; `swap(path)` moves the handle to another file.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runtime.check import ContractBroken, ModelInfo, UnreadableModel, check_file

log = logging.getLogger("runtime")


@dataclass(frozen=True)
class Loaded:
    session: object
    info: ModelInfo
    signature: tuple
    loaded_at: float


def file_signature(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def session_options(threads: int | None = None):
    """The ONNX Runtime session options the runtime uses (docs/runtime.md, section 9, for the C++ side): every graph
    optimisation (fusions and layout changes at load time); `threads` intra-op threads (None: ONNX Runtime's
    default, one per physical core) and one inter-op thread with sequential execution (these graphs are chains,
    and a second pool only competes for the cores); the CPU memory arena and memory patterns on (the shapes repeat
    call after call, so buffers are reused, not allocated)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    return options


# On CUDA, for batch-1 calls of fixed shapes: the fastest convolution algorithm found once per shape, and the
# memory arena growing by what is asked, not by doubling (several models share one card).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE", "arena_extend_strategy": "kSameAsRequested",
                "do_copy_in_default_stream": "1"}


def provider_list(providers: Sequence[str]) -> list:
    """Providers with their options, as InferenceSession takes them."""
    return [(p, CUDA_OPTIONS) if p == "CUDAExecutionProvider" else p for p in providers]


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class Model:
    """Args: path: the .onnx file. watch: follow the file. providers: ONNX Runtime providers in order of preference
    (default: CUDA when available, else CPU). threads: intra-op threads (None: ONNX Runtime's choice). poll: seconds
    between looks at the file. settle: how long the file must stay unchanged before it is read. task: refuse a file
    of another task (default: the task of the first file). keep_labels: refuse a file whose labels (classes, AUs)
    differ from the first file's (for consumers whose output columns are fixed, such as a CSV being written)."""

    def __init__(self, path: Path | str, watch: bool = False, providers: Sequence[str] | None = None,
                 threads: int | None = None, poll: float = 0.1, settle: float = 0.2, task: str | None = None,
                 keep_labels: bool = False):
        self.path = Path(path)
        self.providers = list(providers) if providers else default_providers()
        self.threads, self.poll, self.settle = threads, poll, settle
        self._lock = threading.Lock()
        self._refused: list[dict] = []
        self._rejected_signature: tuple | None = None
        self._reloads = 0
        self._current = self._load(self.path)  # the first file must be good: nothing else to serve
        self.task = task or self._current.info.task
        self.labels = list(self._current.info.labels) if keep_labels else None
        if self._current.info.task != self.task:
            raise ContractBroken(f"{self.path}: a {self._current.info.task} model where a {self.task} model was asked for")
        self._stop = threading.Event()
        self._watcher = None
        if watch:
            self._watcher = threading.Thread(target=self._watch, name=f"watch {self.path.name}", daemon=True)
            self._watcher.start()

    # --- serving ---
    @property
    def info(self) -> ModelInfo:
        return self._current.info

    @property
    def metadata(self) -> dict[str, str]:
        return self._current.info.metadata

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self._current.info.inputs]

    def predict(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{output name: array} for an array (the single input) or {input name: array}."""
        current = self._current  # one read: a swap during the call does not affect it
        names = [t["name"] for t in current.info.inputs]
        feeds = dict(inputs) if isinstance(inputs, Mapping) else {names[0]: inputs}
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        outputs = current.session.run(None, feeds)
        return dict(zip([t["name"] for t in current.info.outputs], outputs))

    @property
    def status(self) -> dict:
        current = self._current
        with self._lock:
            refused = list(self._refused)
        return {"path": str(self.path), "task": self.task, "serving_since": current.loaded_at,
                "version": current.info.metadata.get("version", ""), "signature": current.signature,
                "reloads": self._reloads, "refused": refused, "last_error": refused[-1]["error"] if refused else "",
                "providers": list(current.session.get_providers())}

    # --- reloading ---
    def reload(self) -> bool:
        """Load the file now; True when a new model is serving, False when it was refused (see status)."""
        return self._try(self.path)

    def swap(self, path: Path | str) -> bool:
        """Serve another file from now on (and watch that one); the current one stays if the new one is refused."""
        path = Path(path)
        if self._try(path):
            self.path = path
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _session(self, path: Path):
        import onnxruntime as ort

        try:
            # the bytes are read once, so the file may be replaced again while the session is built
            return ort.InferenceSession(path.read_bytes(), session_options(self.threads),
                                        providers=provider_list(self.providers))
        except OSError as error:
            raise UnreadableModel(f"{path}: {error}") from None
        except Exception as error:
            raise UnreadableModel(f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0][:200]})") from None

    def _load(self, path: Path) -> Loaded:
        signature = file_signature(path)
        session = self._session(path)
        info = check_file(path, session)
        if file_signature(path) != signature:
            raise UnreadableModel(f"{path}: changed while it was being loaded")
        return Loaded(session, info, signature, time.time())

    def _try(self, path: Path) -> bool:
        signature = file_signature(path)
        try:
            loaded = self._load(path)
            if loaded.info.task != self.task:
                raise ContractBroken(f"{path}: a {loaded.info.task} model cannot replace the {self.task} model")
            if self.labels is not None and list(loaded.info.labels) != self.labels:
                raise ContractBroken(f"{path}: labels {loaded.info.labels} differ from {self.labels}, which the "
                                     f"consumer's output columns are fixed to")
        except (UnreadableModel, ContractBroken) as error:
            with self._lock:
                self._refused.append({"path": str(path), "time": time.time(), "error": str(error)})
                self._rejected_signature = signature
            log.warning("model file refused, the previous model keeps serving: %s", error)
            return False
        self._current = loaded
        with self._lock:
            self._reloads += 1
            self._rejected_signature = None
        log.info("serving %s (%s)", path, loaded.info.task)
        return True

    def _watch(self) -> None:
        seen = self._current.signature
        while not self._stop.wait(self.poll):
            now = file_signature(self.path)
            if now is None or now == seen or now == self._rejected_signature:
                continue
            if not self._settled(now):
                continue
            seen = file_signature(self.path)
            if seen is not None and seen != self._current.signature:
                self._try(self.path)
                seen = self._current.signature if self._rejected_signature is None else self._rejected_signature

    def _settled(self, first: tuple) -> bool:
        """The file keeps the same size and time for `settle` seconds (a writer has finished)."""
        deadline = time.monotonic() + self.settle
        while time.monotonic() < deadline:
            if self._stop.wait(min(self.poll, self.settle)):
                return False
            if file_signature(self.path) != first:
                return False
        return True
