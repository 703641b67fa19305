"""The runtime: contract checks, hot reload under load, clip buffer, AU decoding, streaming spotting,
spot-then-recognise, the command line and the golden vectors."""
import json
import os
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tiny_onnx
from common.contract import ContractBroken, check_file, check_values
from runtime.check import REFUSED, UNREADABLE, main as check_main
from runtime.decode import openface_columns
from runtime.model import Model
from runtime.stream import ClipBuffer


def probs_of(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


# ---------------------------------------------------------------- contract check


def test_check_accepts_each_task_and_describes_it(tmp_path, capsys):
    for task in ("emotion", "au", "microexp"):
        path = getattr(tiny_onnx, task)(tmp_path / f"{task}.onnx")
        assert check_main([str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["task"] == task and info["labels"] and info["preprocessing"]
        assert info["inputs"][0]["shape"][0] == "N"
    assert "clip: 16 frames" in " ".join(info["preprocessing"])
    spotter = tiny_onnx.spotting(tmp_path / "spotting.onnx")
    assert check_main([str(spotter), "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["preprocessing"]
    assert "crop and resize to 128 x 128 px" in " ".join(steps) and '"T"' not in " ".join(steps)


def sigmoid_for_softmax(node):
    del node.attribute[:]
    node.op_type = "Sigmoid"


def edited(path, out, edit):
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda m: setattr(m.graph.output[0], "name", "scores"), "outputs are ['scores']"),
    (lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 112), "axis 2 is 112"),
    (lambda m: [p for p in m.metadata_props if p.key == "task"][0].__setattr__("value", "gait"), "task 'gait'"),
    (lambda m: [p for p in m.metadata_props if p.key == "classes"][0].__setattr__("value", '["a", "b"]'), "names 2"),
    (lambda m: sigmoid_for_softmax(m.graph.node[2]), "summing to 1"),
])
def test_check_refuses_a_broken_contract_and_says_how(tmp_path, capsys, edit, message):
    good = tiny_onnx.emotion(tmp_path / "good.onnx")
    bad = edited(good, tmp_path / "bad.onnx", edit)
    assert check_main([str(bad)]) == REFUSED
    assert message in capsys.readouterr().err


def test_labels_and_value_ranges_are_each_tasks_own(tmp_path):
    info = check_file(tiny_onnx.au(tmp_path / "au.onnx"))
    assert info.labels == json.loads(info.metadata["aus"])
    half = np.full((2, len(info.labels)), 0.5, np.float32)
    check_values(info, {"au_prob": half, "au_intensity": half * 10})  # an intensity of exactly 5 is in range
    with pytest.raises(ContractBroken, match=r"au_intensity outside \[0, 5\]"):
        check_values(info, {"au_prob": half, "au_intensity": half * 10.01})
    with pytest.raises(ContractBroken, match=r"au_prob outside \[0, 1\]"):
        check_values(info, {"au_prob": half * 2.01, "au_intensity": half})
    spotter = check_file(tiny_onnx.spotting(tmp_path / "spotting.onnx"))
    assert spotter.labels == json.loads(spotter.metadata["score_names"])
    with pytest.raises(ContractBroken, match=r"scores outside \[0, 1\]"):
        check_values(spotter, {"scores": np.full((1, 4, 6), -0.01, np.float32)})


def test_check_tells_unreadable_files_apart(tmp_path, capsys):
    good = tiny_onnx.emotion(tmp_path / "good.onnx")
    (tmp_path / "half.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.onnx").write_text("not a model")
    for name in ("half.onnx", "text.onnx", "missing.onnx"):
        assert check_main([str(tmp_path / name)]) == UNREADABLE
        assert "unreadable" in capsys.readouterr().err


# ---------------------------------------------------------------- hot reload


def test_hot_reload_under_load(tmp_path):
    live = tmp_path / "models" / "emotion.onnx"
    versions = {seed: tiny_onnx.emotion(tmp_path / f"v{seed}.onnx", seed=seed) for seed in (0, 1, 2, 3)}
    live.parent.mkdir()
    live.write_bytes(versions[0].read_bytes())
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    expected = {seed: probs_of(path, x) for seed, path in versions.items()}
    assert all(not np.allclose(expected[0], expected[s]) for s in (1, 2, 3))

    model = Model(live, watch=True, providers=["CPUExecutionProvider"], poll=0.05, settle=0.1)
    failures, durations, served, stop = [], [], [], threading.Event()

    def caller():
        while not stop.is_set():
            start = time.perf_counter()
            try:
                out = model.predict(x)["probs"]
            except Exception as error:  # noqa: BLE001 -- any failed call is the failure under test
                failures.append(repr(error))
                continue
            durations.append(time.perf_counter() - start)
            served.append(next((s for s, e in expected.items() if np.allclose(out, e, atol=1e-6)), None))

    def serving(seed, within=2.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if served and served[-1] == seed:
                return time.monotonic()
            time.sleep(0.01)
        return None

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        assert serving(0)
        # 1. atomic rename of another model
        staged = live.with_suffix(".tmp")
        staged.write_bytes(versions[1].read_bytes())
        os.replace(staged, live)
        assert serving(1), model.status
        # 2. written in place, slowly, in pieces
        data = versions[2].read_bytes()
        with open(live, "wb") as handle:
            for k in range(0, len(data), len(data) // 6 + 1):
                handle.write(data[k:k + len(data) // 6 + 1])
                handle.flush()
                time.sleep(0.04)
        assert serving(2), model.status
        # 3. a truncated file: refused, the previous model keeps serving
        refused_before = len(model.status["refused"])
        live.write_bytes(versions[3].read_bytes()[:400])
        time.sleep(1.0)
        assert served[-1] == 2 and len(model.status["refused"]) == refused_before + 1
        assert "cannot load" in model.status["last_error"] or "not a readable" in model.status["last_error"]
        # 4. a model of the wrong task: refused
        tiny_onnx.au(tmp_path / "au.onnx")
        staged.write_bytes((tmp_path / "au.onnx").read_bytes())
        os.replace(staged, live)
        time.sleep(1.0)
        assert served[-1] == 2 and "cannot replace the emotion model" in model.status["last_error"]
        # 5. a valid model again
        staged.write_bytes(versions[3].read_bytes())
        os.replace(staged, live)
        assert serving(3), model.status
    finally:
        stop.set()
        thread.join()
        model.close()
    assert not failures
    assert None not in served  # every call was answered by one whole model, never a mixture
    assert len(durations) > 100 and max(durations) < 0.5
    assert model.status["reloads"] == 3


def test_explicit_reload_and_swap(tmp_path):
    first, second = tiny_onnx.emotion(tmp_path / "a.onnx", 0), tiny_onnx.emotion(tmp_path / "b.onnx", 1)
    x = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    with Model(first, providers=["CPUExecutionProvider"]) as model:
        assert np.allclose(model.predict(x)["probs"], probs_of(first, x), atol=1e-6)
        assert model.swap(second) and model.path == second
        expected = probs_of(second, x)
        assert np.allclose(model.predict({"image": x})["probs"], expected, atol=1e-6)
        second.write_text("broken")
        assert not model.reload() and np.allclose(model.predict(x)["probs"], expected, atol=1e-6)
        assert "b.onnx" in model.status["refused"][-1]["path"]
        assert not model.swap(tmp_path / "missing.onnx") and model.path == second


# ---------------------------------------------------------------- clip buffer and AU decoding


def frame(n, size=4):
    return np.full((size, size, 3), n % 256, np.uint8)


def test_clip_buffer_order_stride_and_flush():
    buffer = ClipBuffer(length=16, span=0.5, camera_fps=30.0, stride=8)
    clips = [(n, buffer.push(frame(n), n)) for n in range(40)]
    emitted = [(n, c) for n, c in clips if c is not None]
    assert [n for n, _ in emitted] == [15, 23, 31, 39]  # covered at frame 15 (0.5 s), then every 8 frames
    for n, clip in emitted:
        values = clip[:, 0, 0, 0].astype(int).tolist()
        assert values == sorted(values) and values[-1] == n and values[0] == n - 15
    for n in range(40, 43):
        assert buffer.push(frame(n), n) is None
    last = buffer.flush()
    assert last[-1, 0, 0, 0] == 42 and buffer.flush() is None  # nothing new since
    assert buffer.nbytes == buffer.capacity * frame(0).nbytes and buffer.capacity == 16


@pytest.mark.parametrize("camera_fps", [10.0, 30.0, 120.0])
def test_clip_buffer_resamples_to_the_clip_span(camera_fps):
    buffer = ClipBuffer(length=16, span=0.5, camera_fps=camera_fps, stride=1)
    clip = None
    for n in range(int(camera_fps * 2)):
        clip = buffer.push(frame(n), n) if clip is None else clip
    numbers = clip[:, 0, 0, 0].astype(int)
    seconds = (numbers[-1] - numbers[0]) / camera_fps
    assert seconds == pytest.approx(0.5, abs=1 / camera_fps) and np.all(np.diff(numbers) >= 0)
    assert len(set(numbers.tolist())) == min(16, int(0.5 * camera_fps) + 1)


def test_au_decoding_names_and_order():
    prob = np.array([[0.9, 0.2, 0.6]])
    intensity = np.array([[3.0, 2.0, 1.5]])
    columns = openface_columns(prob, intensity, ["AU01", "AU04", "AU12"], threshold=0.5)
    assert list(columns) == ["AU01_r", "AU04_r", "AU12_r", "AU01_c", "AU04_c", "AU12_c", "AU01_p", "AU04_p", "AU12_p"]
    assert [columns[f"{a}_c"][0] for a in ("AU01", "AU04", "AU12")] == [1, 0, 1]
    assert [columns[f"{a}_r"][0] for a in ("AU01", "AU04", "AU12")] == [3.0, 0.0, 1.5]
    with pytest.raises(ValueError, match="must both be"):
        openface_columns(prob, intensity[:, :2], ["AU01", "AU04", "AU12"])


def test_the_runtime_imports_no_training_stack():
    import subprocess
    import sys

    code = ("import sys, runtime.__main__, runtime.vectors, runtime.check\nfrom runtime import Model, StreamingSpotter\n"
            "heavy = [m for m in ('torch', 'lightning', 'timm', 'transformers', 'yaml', 'pandas') if m in sys.modules]\n"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_a_consumer_with_fixed_columns_refuses_other_labels(tmp_path):
    first = tiny_onnx.emotion(tmp_path / "a.onnx")
    other = tiny_onnx.image_classifier(tmp_path / "b.onnx", "emotion", ["calm", "upset"], 224, seed=4)
    same = tiny_onnx.emotion(tmp_path / "c.onnx", seed=5)
    with Model(first, providers=["CPUExecutionProvider"], keep_labels=True) as model:
        assert not model.swap(other) and "differ" in model.status["last_error"]
        assert model.swap(same)
    with Model(first, providers=["CPUExecutionProvider"]) as free:
        assert free.swap(other) and free.info.labels == ["calm", "upset"]


def test_clip_models_keep_one_transform_while_the_face_stays():
    from runtime.pipeline import SteadyPoints

    steady = SteadyPoints(tolerance=0.15)
    base = np.array([[30.0, 40], [70, 40], [50, 60], [35, 80], [65, 80]])  # eye distance 40
    assert steady(base) is not None and np.array_equal(steady(base + 2.0), base)  # detector jitter: held
    moved = base + 10.0  # a quarter of the eye distance: the head moved
    assert np.array_equal(steady(moved), moved) and np.array_equal(steady(moved + 1), moved)
    assert steady(None) is None
