"""The benchmark commands that must keep working without a GPU: the GPU check's no-GPU path and the ORT table."""
import json

import pytest
import torch

from bench import bench_ort, gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the full check is the thing to run")
def test_gpu_check_says_in_one_line_that_there_is_no_gpu(capsys):
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA device" in out[0]


def test_ort_benchmark_prints_a_json_row_per_architecture(capsys):
    assert bench_ort.main(["--arch", "spotting_tcn", "--runs", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["arch"] for r in rows] == ["spotting_tcn"] and set(rows[0]) == {"arch", "ort_ms", "eager_ms", "ratio"}
    assert rows[0]["ort_ms"] > 0 and rows[0]["ratio"] == pytest.approx(rows[0]["ort_ms"] / rows[0]["eager_ms"], rel=0.01)
    assert set(bench_ort.builders()) >= {"resnet18", "posterpp", "dan", "megraphau_r50", "megraphau_swin_b",
                                         "videomae_s", "videomae_b", "cnn_lstm", "spotting_tcn"}
