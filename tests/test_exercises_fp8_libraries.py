"""The checks of chapter fp8_libraries: correct answers (the reference and other ways of writing it)
pass, realistic mistakes fail, each with the diagnosis of that mistake; the checks' ground truth
agrees with torchao's own objects wherever torchao imports, and with the course's library table."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

from mpcourse.bench import datasheets
from mpcourse.exercises import ExerciseFailed, check, hints
from mpcourse.exercises import fp8_libraries as ex
from mpcourse.fp8 import libraries

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(
    not HAS_TORCHAO, reason="torchao is not installed (the `frameworks` extra)"
)

# ---- fp8_libraries-speedup ---------------------------------------------------------------------------


def speedup_reference(m, k, n, sheet):
    bw = sheet.bandwidth_gb_s * 1e9

    def gemm(peak_tflops, operand_bytes):
        compute = 2 * m * k * n / (peak_tflops * 1e12)
        memory = (operand_bytes * (m * k + k * n) + 2 * m * n) / bw
        return max(compute, memory)

    casts = 5 * (m * k + k * n) / bw  # amax pass (read bf16) + cast (read bf16, write fp8)
    return gemm(sheet.peak_tflops("bf16"), 2) / (gemm(sheet.peak_tflops("fp8"), 1) + casts)


def speedup_kernels(m, k, n, sheet):
    """Another correct answer: microseconds and TB/s, each cast written as its two kernels, a numpy float."""
    tb_s = sheet.bandwidth_gb_s / 1000
    flops = 2.0 * m * k * n

    def us(nbytes, flop=0.0, tflops=1.0):  # 1 TB/s moves 1e6 bytes per microsecond
        return np.maximum(flop / (tflops * 1e6), nbytes / (tb_s * 1e6))

    bf16 = us(2 * m * k + 2 * k * n + 2 * m * n, flops, sheet.dense_tflops["bf16"])
    fp8 = us(m * k + k * n + 2 * m * n, flops, sheet.dense_tflops["fp8"])
    amax = us(2 * m * k) + us(2 * k * n)
    cast = us(3 * m * k) + us(3 * k * n)
    return np.float64(bf16 / (fp8 + amax + cast))


def speedup_course_roofline(m, k, n, sheet):
    """Another correct answer: the course's roofline helpers for each GEMM, the casts by hand."""
    from mpcourse.bench import roofline

    roofs = roofline.Roofs.from_datasheet(sheet)
    times = {}
    for precision in ("bf16", "fp8"):
        flops, nbytes = roofline.matmul_cost(m, n, k, precision)
        times[precision] = roofline.roofline_seconds(
            flops, nbytes, roofs.peak(precision), roofs.bandwidth_gb_s
        )
    casts = (m * k + k * n) * (2 + 2 + 1) / (sheet.bandwidth_gb_s * 1e9)
    return times["bf16"] / (times["fp8"] + casts)


@pytest.mark.parametrize("answer", [speedup_reference, speedup_kernels, speedup_course_roofline])
@pytest.mark.filterwarnings("error")
def test_speedup_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_libraries-speedup", answer)
    assert capsys.readouterr().err == ""


def _speedup_wrong(variant):
    def fn(m, k, n, sheet):
        bw = sheet.bandwidth_gb_s * 1e9
        flops = {"mkn": 1, "sparse": 2}.get(variant, 2) * m * k * n
        peaks = sheet.printed_tflops if variant == "sparse" else sheet.dense_tflops
        fp8_bytes = 2 if variant == "bf16-bytes" else 1
        combine = (lambda a, b: a + b) if variant == "sum" else max
        t16 = combine(flops / (peaks["bf16"] * 1e12), 2 * (m * k + k * n + m * n) / bw)
        t8 = combine(flops / (peaks["fp8"] * 1e12), (fp8_bytes * (m * k + k * n) + 2 * m * n) / bw)
        per_element = {"no-casts": 0, "no-amax": 3}.get(variant, 5)
        casts = per_element * (m * k + (0 if variant == "weight-uncast" else k * n)) / bw
        if variant == "inverse":
            return (t8 + casts) / t16
        if variant == "course-model":
            from mpcourse.bench import fp8_model

            return fp8_model.fp8_speedup(m, k, n, sheet)
        if variant == "string":
            return f"{t16 / (t8 + casts):.2f}x"
        return t16 / (t8 + casts)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("no-casts", "left out the casts"),
        ("mkn", "count M K N FLOPs"),
        ("sparse", "printed peaks"),
        ("bf16-bytes", "reads its operands at 2 bytes"),
        ("sum", "add the compute time and the memory time"),
        ("no-amax", "3 bytes per element"),
        ("weight-uncast", "cast only the \\(M x K\\) operand"),
        ("inverse", "reciprocal"),
        ("course-model", "fp8_model.fp8_speedup"),
        ("string", "expected one number"),
    ],
)
def test_speedup_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_libraries-speedup", _speedup_wrong(variant))


def test_speedup_names_the_case_of_an_unrecognised_mistake() -> None:
    def off_on_the_l4(m, k, n, sheet):
        return speedup_reference(m, k, n, sheet) * (1.1 if sheet.key == "l4" else 1.0)

    with pytest.raises(ExerciseFailed, match="on the NVIDIA L4 your speed-up is .* \\(6 of 18 cases differ"):
        check("fp8_libraries-speedup", off_on_the_l4)


def test_speedup_mistakes_are_told_apart_by_the_cases() -> None:
    """Every diagnosed mistake differs from the model, and from every other mistake, on some case."""
    cases = [(shape, datasheets.DATASHEETS[key]) for key in ex.SPEEDUP_SHEETS for shape in ex.SPEEDUP_SHAPES]
    right = [speedup_reference(*shape, sheet) for shape, sheet in cases]
    values = {d: [v(*shape, sheet) for shape, sheet in cases] for d, v in ex._speedup_variants().items()}
    for d, vals in values.items():
        assert any(not math.isclose(a, b, rel_tol=1e-3) for a, b in zip(vals, right, strict=True)), d
        for other, other_vals in values.items():
            if other != d:
                assert any(
                    not math.isclose(a, b, rel_tol=1e-3) for a, b in zip(vals, other_vals, strict=True)
                )


def test_speedup_cases_cover_both_sides_of_one() -> None:
    """The check's GEMMs include some that fp8 slows down and some it speeds up, on every GPU it models."""
    for key in ex.SPEEDUP_SHEETS:
        values = [speedup_reference(*shape, datasheets.DATASHEETS[key]) for shape in ex.SPEEDUP_SHAPES]
        assert min(values) < 1 < max(values)


# ---- fp8_libraries-gemm_formats ----------------------------------------------------------------------

E4, E5 = torch.float8_e4m3fn, torch.float8_e5m2


def formats_reference(recipe):
    e4m3, e5m2 = "float8_e4m3fn", "float8_e5m2"
    if recipe == "tensorwise":
        return {"output": (e4m3, e4m3), "grad_input": (e5m2, e4m3), "grad_weight": (e5m2, e4m3)}
    grad_weight = None if recipe == "rowwise_with_gw_hp" else (e4m3, e4m3)
    return {"output": (e4m3, e4m3), "grad_input": (e4m3, e4m3), "grad_weight": grad_weight}


def formats_dtypes(recipe):
    """Another correct answer: torch dtypes in lists, built from the operands' formats."""
    grad = E5 if recipe == "tensorwise" else E4
    fmt = {"input": E4, "weight": E4, "grad_output": grad}
    out = {
        gemm: [fmt[a], fmt[b]]
        for gemm, (a, b) in {
            "output": ("input", "weight"),
            "grad_input": ("grad_output", "weight"),
            "grad_weight": ("grad_output", "input"),
        }.items()
    }
    if recipe == "rowwise_with_gw_hp":
        out["grad_weight"] = None
    return out


@pytest.mark.parametrize("answer", [formats_reference, formats_dtypes])
@pytest.mark.filterwarnings("error")
def test_gemm_formats_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_libraries-gemm_formats", answer)
    assert capsys.readouterr().err == ""


def _formats_wrong(variant):
    def fn(recipe):
        out = formats_reference(recipe)
        if variant == "rowwise-e5m2" and recipe == "rowwise":
            out["grad_input"] = ("float8_e5m2", "float8_e4m3fn")
        elif variant == "gw-hp-in-fp8" and recipe == "rowwise_with_gw_hp":
            out["grad_weight"] = ("float8_e4m3fn", "float8_e4m3fn")
        elif variant == "gw-hp-all-backward" and recipe == "rowwise_with_gw_hp":
            out["grad_input"] = None
        elif variant == "tensorwise-e4m3" and recipe == "tensorwise":
            out["grad_input"] = ("float8_e4m3fn", "float8_e4m3fn")
        elif variant == "swapped" and recipe == "tensorwise":
            out["grad_weight"] = ("float8_e4m3fn", "float8_e5m2")
        elif variant == "fnuz":
            out["output"] = ("float8_e4m3fnuz", "float8_e4m3fnuz")
        elif variant == "bf16-pair" and recipe == "rowwise_with_gw_hp":
            out["grad_weight"] = ("bfloat16", "bfloat16")
        elif variant == "missing-key":
            del out["grad_weight"]
        elif variant == "hp-tensorwise" and recipe == "tensorwise":
            out["grad_weight"] = None
        elif variant == "forward-e5m2" and recipe == "tensorwise":
            out["output"] = ("float8_e5m2", "float8_e4m3fn")
        return out

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("rowwise-e5m2", "rowwise recipes set float8_e4m3fn for every"),
        ("gw-hp-in-fp8", "keeps the weight-gradient GEMM in high"),
        ("gw-hp-all-backward", "only the weight-gradient GEMM stays in high precision"),
        ("tensorwise-e4m3", "casts gradients to float8_e5m2"),
        ("swapped", "wrong order"),
        ("fnuz", "MI300"),
        ("bf16-pair", "is None in this exercise"),
        ("missing-key", "expected exactly output, grad_input, grad_weight"),
        ("hp-tensorwise", "runs all three GEMMs"),
        ("forward-e5m2", "cast to float8_e4m3fn in every recipe"),
    ],
)
def test_gemm_formats_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_libraries-gemm_formats", _formats_wrong(variant))


def test_gemm_formats_table_covers_torchaos_recipe_names() -> None:
    from mpcourse.fp8.torchao import TORCHAO_RECIPES

    assert tuple(ex.TORCHAO_GEMM_FORMATS) == TORCHAO_RECIPES


@needs_torchao
def test_gemm_formats_table_is_torchaos() -> None:
    """Each recipe's Float8LinearConfig: a GEMM's two cast configs, DISABLED meaning high precision."""
    from torchao.float8 import Float8LinearConfig
    from torchao.float8.config import ScalingType

    def fmt(cast):
        return (
            None
            if cast.scaling_type is ScalingType.DISABLED
            else str(cast.target_dtype).removeprefix("torch.")
        )

    for recipe, want in ex.TORCHAO_GEMM_FORMATS.items():
        c = Float8LinearConfig.from_recipe_name(recipe)
        pairs = {
            "output": (c.cast_config_input, c.cast_config_weight),
            "grad_input": (c.cast_config_grad_output, c.cast_config_weight_for_grad_input),
            "grad_weight": (c.cast_config_grad_output_for_grad_weight, c.cast_config_input_for_grad_weight),
        }
        got = {}
        for gemm, (a, b) in pairs.items():
            assert (fmt(a) is None) == (fmt(b) is None)  # torchao asserts it too
            got[gemm] = None if fmt(a) is None else (fmt(a), fmt(b))
        assert got == want, recipe


# ---- fp8_libraries-te_default ------------------------------------------------------------------------


def te_reference(cc, cuda):
    if (10, 0) <= cc < (12, 0):
        name = "MXFP8BlockScaling"
    elif cc >= (12, 0):
        name = "Float8CurrentScaling"
    else:
        name = "DelayedScaling"
    runs = cc >= (9, 0) or (cc == (8, 9) and cuda >= (12, 1))
    return name, runs


def te_by_table(cc, cuda):
    """Another correct answer: the default from a table of ranges, whether it runs from libraries' table."""
    major, _ = cc
    name = {10: "MXFP8BlockScaling()", 11: "MXFP8BlockScaling()"}.get(
        major, "Float8CurrentScaling" if major >= 12 else "DelayedScaling"
    )
    key = {"MXFP8BlockScaling()": "mxfp8", "Float8CurrentScaling": "tensorwise", "DelayedScaling": "delayed"}[
        name
    ]
    offer = libraries.get_offer(key, "Transformer Engine")
    ok = cc >= offer.min_cc and (offer.below_cc is None or cc < offer.below_cc)
    if offer.min_cuda is not None and cc < offer.cuda_below_cc:
        ok = ok and cuda >= offer.min_cuda
    return [name, np.bool_(ok)]


@pytest.mark.parametrize("answer", [te_reference, te_by_table, ex.te_default_recipe])
@pytest.mark.filterwarnings("error")
def test_te_default_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_libraries-te_default", answer)
    assert capsys.readouterr().err == ""


def _te_wrong(variant):
    def fn(cc, cuda):
        name, runs = te_reference(cc, cuda)
        if variant == "current-everywhere":
            name = "Float8CurrentScaling"
        elif variant == "mxfp8-on-120":
            name = "MXFP8BlockScaling" if cc >= (10, 0) else name
        elif variant == "delayed-on-blackwell":
            name = "DelayedScaling" if cc < (12, 0) else name
        elif variant == "runs-everywhere":
            runs = True
        elif variant == "ada-ignores-cuda":
            runs = cc >= (8, 9)
        elif variant == "cuda-on-hopper":
            runs = cc >= (8, 9) and cuda >= (12, 1)
        elif variant == "none-before-ada":
            name = name if cc >= (8, 9) else None
        elif variant == "block-scaling":
            name = "Float8BlockScaling" if (9, 0) <= cc < (10, 0) else name
        elif variant == "current-from-blackwell":
            name = "Float8CurrentScaling" if cc >= (10, 0) else name
        elif variant == "never-on-ada":
            runs = cc >= (9, 0)
        elif variant == "only-name":
            return name
        return name, runs

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("current-everywhere", "Float8CurrentScaling everywhere"),
        ("mxfp8-on-120", "refuses MXFP8 there"),
        ("delayed-on-blackwell", "DelayedScaling on Blackwell"),
        ("runs-everywhere", "older than Ada"),
        ("ada-ignores-cuda", "ignore the CUDA version on Ada"),
        ("cuda-on-hopper", "require CUDA 12.1 on Hopper"),
        ("none-before-ada", "never returns None"),
        ("block-scaling", "'Float8BlockScaling', which get_default_fp8_recipe never returns"),
        ("current-from-blackwell", "Float8CurrentScaling from Blackwell on"),
        ("never-on-ada", "never runs on Ada"),
        ("only-name", "expected a pair"),
    ],
)
def test_te_default_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_libraries-te_default", _te_wrong(variant))


@pytest.mark.parametrize(("cc", "cuda"), ex.TE_CASES)
def test_te_default_agrees_with_the_library_table(cc, cuda) -> None:
    """Whether the default runs, by the rule of the check and by mpcourse.fp8.libraries' TE offers."""
    name, runs = ex.te_default_recipe(cc, cuda)
    key = {cls: key for key, cls in libraries.TE_RECIPES.items()}[name]
    offer = libraries.get_offer(key, "Transformer Engine")
    by_table = cc >= offer.min_cc and (offer.below_cc is None or cc < offer.below_cc)
    if offer.min_cuda is not None and (offer.cuda_below_cc is None or cc < offer.cuda_below_cc):
        by_table = by_table and cuda >= offer.min_cuda
    assert runs == by_table


def test_te_default_matches_the_table_on_the_presets() -> None:
    """On the course's GPU presets, the default's hardware verdict is te_status's."""
    from mpcourse import device

    for preset in ("t4", "a100", "l4", "h100", "b200"):
        caps = device.capabilities(preset=preset)
        name, runs = ex.te_default_recipe(caps.compute_capability, (12, 9))
        assert libraries.te_status(caps, name)[0] == runs, preset


# ---- fp8_libraries-auto_filter -----------------------------------------------------------------------


def filter_reference(module, fqn, filter_fqns):
    if not isinstance(module, nn.Linear):
        return False
    if any(name in fqn for name in filter_fqns):
        return False
    n, k = module.weight.shape
    if k % 16 != 0 or n % 16 != 0:
        return False
    return not (k <= 4096 and n <= 1024)


def filter_features(module, fqn, filter_fqns):
    """Another correct answer: in/out features, a loop over the names, the size test as one expression."""
    if not isinstance(module, nn.Linear):
        return False
    for name in filter_fqns:
        if fqn.find(name) >= 0:
            return False
    k, n = module.in_features, module.out_features
    return (k % 16, n % 16) == (0, 0) and (k > 4096 or n > 1024)


@pytest.mark.parametrize("answer", [filter_reference, filter_features, ex.auto_filter_reference])
@pytest.mark.filterwarnings("error")
def test_auto_filter_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_libraries-auto_filter", answer)
    assert capsys.readouterr().err == ""


def _filter_wrong(variant):
    def fn(module, fqn, filter_fqns):
        if variant == "no-kind-check":
            n, k = module.weight.shape
            return k % 16 == 0 and n % 16 == 0 and not (k <= 4096 and n <= 1024)
        if variant == "everything-else-true" and not isinstance(module, nn.Linear):
            return True
        if not isinstance(module, nn.Linear) or (variant == "exact-type" and type(module) is not nn.Linear):
            return False
        if variant == "exact-name":
            if fqn in filter_fqns:
                return False
        elif any(name in fqn for name in filter_fqns):
            return False
        n, k = module.weight.shape
        if variant == "swapped":
            n, k = k, n
        if variant == "in-only":
            divisible = k % 16 == 0
        else:
            divisible = k % 16 == 0 and n % 16 == 0
        small = {
            "or": k <= 4096 or n <= 1024,
            "strict": k < 4096 and n < 1024,
            "no-size": False,
        }.get(variant, k <= 4096 and n <= 1024)
        if variant == "returns-none":
            return None if small else True
        return divisible and not small

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("swapped", "wrong way round"),
        ("or", "when either dimension is small"),
        ("strict", "uses < where torchao's uses <="),
        ("exact-name", "compare the full name"),
        ("in-only", "only in_features"),
        ("no-size", "leave out the size test"),
        ("exact-type", "exactly nn.Linear"),
        ("no-kind-check", "must answer False for a module that is not a linear layer"),
        ("everything-else-true", "only linear layers are converted"),
        ("returns-none", "expected True or False"),
    ],
)
def test_auto_filter_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_libraries-auto_filter", _filter_wrong(variant))


def test_auto_filter_cases_take_no_memory_and_have_their_shapes() -> None:
    """The check's large layers hold one element each, and report the shapes they stand for."""
    for case, module, _, _ in ex._auto_filter_cases():
        assert all(p.untyped_storage().nbytes() <= 4 * 8192 for p in module.parameters()), case
        if isinstance(module, nn.Linear):
            assert module.weight.shape == (module.out_features, module.in_features), case


@needs_torchao
def test_auto_filter_reference_is_torchaos() -> None:
    from torchao.float8 import _auto_filter_for_recipe

    for case, module, fqn, names in ex._auto_filter_cases():
        want = _auto_filter_for_recipe("tensorwise", names)(module, fqn)
        assert ex.auto_filter_reference(module, fqn, names) == want, case


# ---- all four --------------------------------------------------------------------------------------


def test_every_exercise_has_three_hints_without_its_answer() -> None:
    from mpcourse.exercises import labels

    assert labels("fp8_libraries") == [
        "fp8_libraries-auto_filter",
        "fp8_libraries-gemm_formats",
        "fp8_libraries-speedup",
        "fp8_libraries-te_default",
    ]
    for label in labels("fp8_libraries"):
        assert len(hints(label)) == 3, label
    speedup = " ".join(hints("fp8_libraries-speedup"))
    assert "5 bytes" not in speedup and "max(" not in speedup
    assert "MXFP8BlockScaling" not in " ".join(hints("fp8_libraries-te_default"))
    assert "e5m2" not in " ".join(hints("fp8_libraries-gemm_formats")).lower()


def test_stubs_are_noted_not_failed(capsys) -> None:
    def stub(*args):
        raise NotImplementedError()

    for label in ("fp8_libraries-speedup", "fp8_libraries-gemm_formats", "fp8_libraries-te_default"):
        check(label, stub)
        assert "not done yet" in capsys.readouterr().err
    check("fp8_libraries-auto_filter", stub)
    assert "not done yet" in capsys.readouterr().err
