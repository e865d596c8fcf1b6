"""mpcourse.bench.checks: the expectations a chapter checks on stored results fire on wrong records.

The records here are synthetic on purpose: no GPU record is stored yet, and each check must be
shown both to accept a record that agrees with the datasheets and to reject one that does not.
"""

from __future__ import annotations

import pytest

from mpcourse import reference
from mpcourse.bench import checks, datasheets, results

H100 = {
    "kind": "cuda",
    "device_name": "NVIDIA H100 80GB HBM3",
    "device": "cuda: NVIDIA H100 80GB HBM3 (sm_90)",
}


def _record(topic: str, tables: dict, environment: dict | None = None) -> dict:
    return results.make_record(
        topic, tables, command=f"mpcourse bench {topic}", environment=environment or H100
    )


def _sweep(
    bf16_seconds: tuple[float, float] = (2e-5, 1.5e-3), bf16_status: str = "native", peak: float = 989.5
) -> list[dict]:
    """fp32 and bf16 products at n = 1024 and 8192, fp32 at 60% of its 67 TFLOP/s peak."""
    rows = []
    for p, seconds in (("fp32", (2 * 1024**3 / 40e12, 2 * 8192**3 / 40e12)), ("bf16", bf16_seconds)):
        for n, s in zip((1024, 8192), seconds):
            tflops = 2 * n**3 / s / 1e12
            top = 67.0 if p == "fp32" else peak
            rows.append(
                {
                    "precision": p,
                    "m": n,
                    "n": n,
                    "k": n,
                    "status": "native" if p == "fp32" else bf16_status,
                    "seconds": s,
                    "tflops": tflops,
                    "pct_of_peak": 100 * tflops / top,
                    "peak_source": "datasheet: NVIDIA H100 SXM (dense)",
                }
            )
    return rows


def test_a_gpu_sweep_that_agrees_with_the_datasheet_passes() -> None:
    checked = checks.matmul(_record("matmul", {"matmul": _sweep()}))
    assert any("bf16 tensor cores" in c for c in checked) and any("dense peak" in c for c in checked)


@pytest.mark.parametrize(
    "sweep, message",
    [
        (_sweep(bf16_seconds=(2e-5, 2 * 8192**3 / 60e12)), "gave only"),  # bf16 at 60 TFLOP/s: 1.5x fp32
        (_sweep(bf16_seconds=(2 * 1024**3 / 900e12, 2 * 8192**3 / 700e12)), "smallest bf16 product"),
        (_sweep(bf16_seconds=(2e-5, 2 * 8192**3 / 1100e12)), "above the datasheet peak"),
    ],
)
def test_a_gpu_sweep_that_contradicts_the_datasheet_fails(sweep, message) -> None:
    with pytest.raises(AssertionError, match=message):
        checks.matmul(_record("matmul", {"matmul": sweep}))


def test_an_emulated_precision_faster_than_fp32_fails_anywhere() -> None:
    cpu = {"kind": "cpu", "device_name": "AMD EPYC", "device": "cpu: AMD EPYC (flags: avx2)"}
    sweep = [dict(r, peak_source="best measured on this device") for r in _sweep(bf16_status="emulated")]
    with pytest.raises(AssertionError, match="emulated bf16 ran"):
        checks.matmul(_record("matmul", {"matmul": sweep}, cpu))
    slow = [dict(r, seconds=r["seconds"] * (50 if r["precision"] == "bf16" else 1)) for r in sweep]
    (checked,) = checks.matmul(_record("matmul", {"matmul": slow}, cpu))
    assert checked.startswith("emulated bf16 is no faster than fp32 (0.37x at n=8192)")


def test_pitfalls_on_a_gpu() -> None:
    good = {
        "precision": "bf16",
        "n": 4096,
        "naive": 0.5,
        "unsynchronised": 1e-5,
        "benchmark": 2e-4,
        "independent": 2e-4,
    }
    assert checks.pitfalls(_record("matmul", {"pitfalls": [good]})) != []
    with pytest.raises(AssertionError, match="without synchronisation"):
        checks.pitfalls(_record("matmul", {"pitfalls": [good | {"unsynchronised": 1.9e-4}]}))
    with pytest.raises(AssertionError, match="cold first call"):
        checks.pitfalls(_record("matmul", {"pitfalls": [good | {"naive": 1e-4}]}))
    cpu = {"kind": "cpu", "device_name": "AMD EPYC"}
    assert checks.pitfalls(_record("matmul", {"pitfalls": [good | {"unsynchronised": 1.9e-4}]}, cpu)) == []


def test_elementwise_on_a_gpu_gains_the_byte_ratio() -> None:
    def add(ratio: float) -> dict:
        rows = [
            {"precision": p, "elements": 2**28, "seconds": s}
            for p, s in (("fp32", 1e-3), ("bf16", 1e-3 / ratio))
        ]
        return _record("matmul", {"elementwise": rows})

    assert checks.elementwise(add(1.9))
    with pytest.raises(AssertionError, match="byte ratio"):
        checks.elementwise(add(5.0))


def test_training_steps() -> None:
    def steps(bf16_rate: float, mfu: float) -> dict:
        rows = [
            {"recipe": "fp32", "status": "native", "samples_per_s": 100.0, "mfu": 0.3},
            {"recipe": "bf16", "status": "native", "samples_per_s": bf16_rate, "mfu": mfu},
        ]
        return _record("train", {"recipes": rows})

    assert len(checks.train(steps(300.0, 0.2))) == 2
    with pytest.raises(AssertionError, match="not faster than fp32"):
        checks.train(steps(90.0, 0.2))
    with pytest.raises(AssertionError, match="MFU outside"):
        checks.train(steps(300.0, 1.5))


#: The records the course ships for each benchmark topic: one file per machine.
SHIPPED = {"cpu-avx2-2core", "cpu-amx-2core"}


def test_stored_records_pass_their_checks() -> None:
    """Every shipped record is present, read, and passes every check that applies to it.

    The stored records are all CPU runs: on a CPU the matmul check of emulated precisions applies
    (fp8 is emulated on every CPU), while the GPU expectations (pitfalls, elementwise, training
    speed-ups) and MFU (no datasheet peak for a CPU) do not. Those are shown on a synthetic GPU
    record below, since no GPU record is stored yet.
    """
    for topic in ("matmul", "train"):
        files = {p.stem for p in reference.folder(topic).glob("*.json")}
        assert SHIPPED <= files, (topic, sorted(files))
        assert len(reference.records(topic)) == len(files), topic  # every file is a record of its topic
    for r in reference.records("matmul"):
        assert any(c.startswith("emulated fp8 is no faster than fp32") for c in checks.matmul(r)), (
            results.label(r)
        )
        if r["environment"]["kind"] == "cpu":
            assert checks.pitfalls(r) == [] and checks.elementwise(r) == []
        else:
            assert checks.pitfalls(r) and checks.elementwise(r)
    for r in reference.records("train"):
        statements = checks.train(r)
        assert statements if r["environment"]["kind"] == "cuda" else statements == [], results.label(r)


def test_a_stored_gpu_record_passes_every_check(tmp_path) -> None:
    """A synthetic H100 record with every table a GPU run of ``mpcourse bench matmul`` and ``train``
    stores (invented numbers, shaped like a real run: fp32 at 60% and bf16 at 75% of the datasheet's
    dense peaks for large products), saved and read back like a stored record, passes every check."""
    sweep = _sweep(bf16_seconds=(2 * 1024**3 / 300e12, 2 * 8192**3 / 740e12))
    pitfalls = [
        {
            "precision": "bf16",
            "n": 4096,
            "naive": 0.5,
            "unsynchronised": 1e-5,
            "benchmark": 2e-4,
            "independent": 2e-4,
        }
    ]
    elementwise = [
        {"precision": p, "elements": n, "seconds": n * b * 3 / 2.4e12}
        for n in (2**20, 2**28)
        for p, b in (("fp32", 4), ("bf16", 2))
    ]
    recipes = [
        {"recipe": "fp32", "status": "native", "samples_per_s": 2000.0, "mfu": 0.35},
        {"recipe": "bf16", "status": "native", "samples_per_s": 5200.0, "mfu": 0.45},
        {"recipe": "fp16", "status": "native", "samples_per_s": 5100.0, "mfu": 0.44},
    ]
    results.save(
        _record("matmul", {"matmul": sweep, "pitfalls": pitfalls, "elementwise": elementwise}),
        tmp_path / "h100.json",
    )
    results.save(_record("train", {"recipes": recipes}), tmp_path / "h100-train.json")
    (matmul,) = reference.records("matmul", tmp_path)
    (train,) = reference.records("train", tmp_path)
    assert len(checks.matmul(matmul)) == 2  # the dense peak, and the bf16 tensor cores' speed-up over fp32
    assert len(checks.pitfalls(matmul)) == 1
    assert checks.elementwise(matmul)[0].startswith("add of 268,435,456 elements: bf16 2.00x faster")
    assert checks.train(train) == ["MFU of 3 native recipes in (0, 1]", "bf16 steps 2.60x as fast as fp32"]


def test_large_products_are_compute_bound_on_every_datasheet_gpu() -> None:
    for sheet in datasheets.DATASHEETS.values():
        if "bf16" not in sheet.dense_tflops:
            continue
        assert 3 * sheet.balance_point["bf16"] < checks.LARGE_N, sheet.name  # 2n / (3 * 2 bytes) >= balance
        assert sheet.dense_tflops["bf16"] >= 3 * sheet.dense_tflops["fp32"], sheet.name


def test_report_names_the_record_of_each_statement() -> None:
    lines = checks.report(
        lambda record: [f"{record['x']} ok"] * record["x"], {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 0}}
    )
    assert lines == ["checked on a: 1 ok", "checked on b: 2 ok", "checked on b: 2 ok"]
