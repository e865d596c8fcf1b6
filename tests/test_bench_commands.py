"""``mpcourse bench matmul``: the table it prints and the results it stores."""

from __future__ import annotations

import pandas as pd

from mpcourse import device
from mpcourse.bench import commands, results
from mpcourse.course.cli import BENCHES, main


def test_topics_are_registered() -> None:
    assert BENCHES["matmul"] == "mpcourse.bench.commands:matmul"
    assert BENCHES["train"] == "mpcourse.bench.commands:train"


def test_quick_matmul_prints_a_table_and_saves_results(tmp_path, capsys) -> None:
    path = tmp_path / "cpu.json"
    assert main(["bench", "matmul", "--quick", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    for word in ("timing pitfalls", "precision", "tflops", "pct_of_peak", "bandwidth", f"saved {path}"):
        assert word in out
    record = results.load(path)
    assert record["topic"] == "matmul"
    assert set(record["tables"]) == {"matmul", "elementwise", "pitfalls", "bandwidth"}
    assert len(record["tables"]["matmul"]) == 2 * 5


def test_headline_names_the_reference() -> None:
    frame = pd.DataFrame(
        [
            {
                "precision": "bf16",
                "m": 8192,
                "n": 8192,
                "k": 8192,
                "tflops": 742.0,
                "pct_of_peak": 75.0,
                "peak_tflops": 989.5,
                "peak_source": "datasheet: NVIDIA H100 SXM (dense)",
            }
        ]
    )
    line = commands.headline(frame)
    assert line.startswith("bf16 at 8192^3: 742.0 TFLOP/s = 75.0% of 989.5 TFLOP/s (datasheet")
    assert commands.headline(frame, size=4096) is None


def test_sizes_follow_the_profile(monkeypatch) -> None:
    monkeypatch.setenv("MPCOURSE_PROFILE", "full")
    assert commands.matmul_sizes("cuda")[-1] == 8192
    assert commands.matmul_sizes("cpu", quick=True) == [64, 128]
    h100, t4 = device.capabilities(preset="h100"), device.capabilities(preset="t4")
    assert commands.train_config(h100)["width"] == 1024 and commands.train_config(t4)["width"] == 512
    monkeypatch.setenv("MPCOURSE_PROFILE", "ci")
    assert commands.train_config(h100) == commands.train_config(t4, quick=True)


def test_quick_train_prints_recipes_and_saves_results(tmp_path, capsys) -> None:
    path = tmp_path / "train.json"
    assert main(["bench", "train", "--quick", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    for word in ("recipe", "samples_per_s", "FLOPs per step", "longest kernels", f"saved {path}"):
        assert word in out
    record = results.load(path)
    assert record["topic"] == "train" and set(record["tables"]) == {"recipes", "kernels", "config"}
    rows = {r["recipe"]: r for r in record["tables"]["recipes"]}
    assert {"fp32", "bf16", "fp8_tensorwise", "fp8_delayed", "fp8_rowwise", "fp8_blockwise", "mxfp8"} <= set(
        rows
    )
    assert rows["fp8_rowwise"]["samples_per_s"] > 0
    if (
        not device.capabilities().fp8_native
    ):  # torchao needs fp8 tensor cores: listed, not run, with the reason
        assert rows["torchao_tensorwise"]["status"] == "skipped" and rows["torchao_tensorwise"]["note"]
        assert "not measured:" in out and "torchao_tensorwise (skipped)" in out
