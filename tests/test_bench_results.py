"""mpcourse.bench.results: the stored format, and the reference results shipped with the package."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import ROOT

from mpcourse import reference
from mpcourse.bench import results


def _record() -> dict:
    frame = pd.DataFrame({"precision": ["fp32", "tf32"], "seconds": [0.001, float("nan")]})
    return results.make_record(
        "matmul", {"matmul": frame, "extra": [{"x": 1}]}, command="mpcourse bench matmul"
    )


def test_a_record_says_what_where_when_and_how(tmp_path) -> None:
    record = _record()
    assert set(results.KEYS) <= set(record)
    env = record["environment"]
    assert {"device_name", "torch", "cuda", "python", "mpcourse"} <= set(env)
    assert record["date"].endswith("+00:00") and record["command"] == "mpcourse bench matmul"
    path = results.save(record, tmp_path / "sub" / "r.json")
    text = path.read_text()
    assert "NaN" not in text  # strict JSON: a missing measurement is null
    back = results.load(path)
    assert back == json.loads(text) and back["tables"]["matmul"][1]["seconds"] is None
    frame = results.table(back, "matmul")
    assert frame["source"].iloc[0] == results.label(back)
    assert math.isnan(frame["seconds"].iloc[1])


def test_reference_records_filter_by_topic(tmp_path) -> None:
    record = _record()
    results.save(record, tmp_path / "a.json")
    results.save({**record, "topic": "train"}, tmp_path / "b.json")
    assert [r["topic"] for r in reference.records("matmul", tmp_path)] == ["matmul"]


def test_save_never_replaces_a_file_unless_told(tmp_path) -> None:
    path = tmp_path / "stored.json"
    path.write_text("a result measured elsewhere\n")
    with pytest.raises(
        results.OverwriteError, match=r"stored\.json already exists.*--force \(overwrite=True"
    ):
        results.save(_record(), path)
    assert path.read_text() == "a result measured elsewhere\n"
    assert isinstance(results.OverwriteError("x"), FileExistsError)  # what callers catching OSError expect
    assert results.load(results.save(_record(), path, overwrite=True))["topic"] == "matmul"
    with pytest.raises(IsADirectoryError, match="is a folder; give the name of the result file"):
        results.save(_record(), tmp_path, overwrite=True)  # never a folder, not even with overwrite
    with pytest.raises(
        ValueError, match="missing keys"
    ):  # a bad record is refused before the file is touched
        results.save({"topic": "matmul"}, path, overwrite=True)
    assert results.ensure_writable(tmp_path / "new.json") == tmp_path / "new.json"


def test_bad_files_are_named(tmp_path) -> None:
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        results.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"topic": "matmul"}')
    with pytest.raises(ValueError, match="missing keys"):
        results.load(tmp_path / "y.json")
    with pytest.raises(KeyError, match="no table 'nope'"):
        results.table(_record(), "nope")
    with pytest.raises(ValueError, match="at least one table"):
        results.make_record("matmul", {}, command="x")


def test_shipped_reference_results_load_and_are_packaged() -> None:
    stored = sorted(p for topic in reference.BENCH_TOPICS for p in reference.folder(topic).glob("*.json"))
    assert stored, "the course ships at least one reference result"
    for path in stored:
        record = results.load(path)
        assert record["environment"]["device_name"] and record["command"].startswith("mpcourse bench")
        if record["topic"] == "matmul":
            frame = results.table(record, "matmul")
            assert {"precision", "m", "n", "k", "tflops", "pct_of_peak", "rel_error"} <= set(frame)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"mpcourse.reference" = ["*/*.json"' in pyproject.split("[tool.setuptools.package-data]")[1]


def test_records_from_several_devices_stay_apart() -> None:
    epyc = results.make_record(
        "matmul",
        {"m": [{"x": 1}]},
        command="c",
        environment={"kind": "cpu", "device_name": "AMD EPYC", "device": "cpu: AMD EPYC (flags: avx2)"},
    )
    xeon = results.make_record(
        "matmul",
        {"m": [{"x": 1}]},
        command="c",
        environment={
            "kind": "cpu",
            "device_name": "Intel(R) Xeon(R) Processor",
            "device": "cpu: Intel(R) Xeon(R) Processor (flags: amx_bf16)",
        },
    )
    gpu = results.make_record(
        "matmul",
        {"m": [{"x": 1}]},
        command="c",
        environment={"kind": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "device": "cuda: H100"},
    )
    assert "(flags: avx2)" in results.label(epyc) and "amx_bf16" in results.label(xeon)
    assert results.label(gpu).startswith("NVIDIA H100 80GB HBM3 (torch")
    named = results.by_label([epyc, xeon, epyc])  # the same run twice keeps two entries
    assert len(named) == 3 and list(named)[2] == results.label(epyc) + " #2"
    assert results.devices([epyc, xeon, epyc]) == [
        "cpu: AMD EPYC (flags: avx2)",
        "cpu: Intel(R) Xeon(R) Processor (flags: amx_bf16)",
    ]
    assert results.gpu_records([epyc, gpu, xeon]) == [gpu] and results.gpu_records([epyc]) == []
    assert "--save mpcourse/reference/" in results.missing_gpu_note(
        "train"
    ) and "bench train" in results.missing_gpu_note("train")
    assert results.table(epyc, "m", source="mine")["source"].tolist() == ["mine"]


def test_bf16_vs_fp32_pairs_the_precisions_of_each_record() -> None:
    env = {"kind": "cpu", "device": "cpu: Test CPU (flags: avx2)"}
    matmul = {
        "environment": env,
        "date": "2026-01-01",
        "tables": {
            "matmul": [
                {"precision": p, "m": n, "n": n, "k": n, "status": s, "seconds": t}
                for p, s, n, t in [
                    ("fp32", "native", 256, 0.001),
                    ("bf16", "emulated", 256, 0.03),
                    ("fp32", "native", 512, 0.008),
                    ("bf16", "emulated", 512, None),
                    ("tf32", "skipped", 256, None),
                ]
            ]
            + [{"precision": "bf16", "m": 256, "n": 256, "k": 64, "status": "emulated", "seconds": 0.01}]
        },
    }
    train = {
        "environment": env,
        "date": "2026-01-01",
        "tables": {
            "recipes": [
                {"recipe": "fp32", "status": "native", "step_ms": 100.0},
                {"recipe": "bf16", "status": "emulated", "step_ms": 2500.0},
                {"recipe": "fp16", "status": "emulated", "step_ms": 3000.0},
            ]
        },
    }
    table = results.bf16_vs_fp32([matmul], [train])
    # one square size with both precisions; the non-square and unmeasured rows are left out; no pure_bf16 step
    assert list(table["what"]) == ["matmul n = 256", "training step, bf16 autocast"]
    assert list(table["bf16 / fp32 time"]) == pytest.approx([30.0, 25.0])
    assert set(table["bf16"]) == {"emulated"} and set(table["kind"]) == {"cpu"}
    assert results.bf16_vs_fp32([], []).empty


def test_bf16_vs_fp32_reads_the_stored_references() -> None:
    table = results.bf16_vs_fp32()
    assert len(table) and (table["bf16 / fp32 time"] > 0).all()
    assert set(table["device"]) == {results.label(r) for r in reference.records("matmul")}
