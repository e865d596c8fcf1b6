"""``mpcourse bench formats``: the speed of mpcourse.formats, in the course's result format."""

import math

from mpcourse.bench import results


def test_the_formats_benchmark_prints_and_saves_every_case(tmp_path, capsys) -> None:
    """``mpcourse bench formats --quick``, run through the command line: its table has one row per case.

    No timing thresholds (they would depend on the machine): only that every case ran, was printed
    and was saved with a positive, finite median.
    """
    from mpcourse.course import cli

    out = tmp_path / "formats.json"
    assert cli.main(["bench", "formats", "--quick", "--save", str(out)]) == 0
    n = "100,000"  # --quick encodes 10^5 values instead of 10^6
    expected = [
        "decode all 65,536 float16 patterns",
        "decode all 65,536 bfloat16 patterns",
        *(
            f"encode {n} float32 values to {name}"
            for name in ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn")
        ),
        f"round {n} float32 values to float8_e4m3fn",
        f"round_tensor {n} float32 values (CPU tensor) to float8_e4m3fn",
    ]
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    timed = [line for line in printed if line.endswith(" ms")]
    assert [line.rsplit(None, 2)[0] for line in timed] == expected
    record = results.load(out)  # the course's one result format, validated
    assert record["topic"] == "formats" and {"torch", "device"} <= set(record["environment"])
    assert [row["case"] for row in record["tables"]["cases"]] == expected
    for row in record["tables"]["cases"]:
        assert row["repeats"] == 5 and 0 < row["min_s"] <= row["median_s"] < math.inf
