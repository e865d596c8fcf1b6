"""mpcourse.fp8.recipes, .quantized and .delayed: every recipe against independent references.

The references: ml_dtypes, the specifications' rules, and Transformer Engine's kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpcourse import formats, fp8
from mpcourse.fp8.quantized import pow2

RECIPES_AND_FORMATS = [
    ("tensorwise", "e4m3"),
    ("tensorwise", "e5m2"),
    ("tensorwise", "e2m1"),
    ("rowwise", "e4m3"),
    ("rowwise", "e5m2"),
    ("blockwise", "e4m3"),
    ("blockwise_2d", "e4m3"),
    ("mx", "e4m3"),
    ("mx", "e5m2"),
    ("mx", "e2m1"),
    ("mx", "e3m2"),
    ("nvfp4", "e2m1"),
    ("tensorwise", "e4m3fnuz"),
]


def wide_tensor(rows: int = 256, cols: int = 512, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, cols, generator=gen)
        * torch.logspace(-4, 3, cols)[torch.randperm(cols, generator=gen)]
    )


@pytest.mark.parametrize("recipe, fmt", RECIPES_AND_FORMATS)
def test_round_trip_is_within_the_format_error_bound(recipe: str, fmt: str) -> None:
    """Each element is within half an ulp of the format (relative 2^-(m+1), or half the subnormal spacing,
    times its scale) of the original; elements whose scaled value exceeded max are exactly ±max x scale."""
    x = wide_tensor()
    q = fp8.quantize(x, recipe, fmt)
    f = q.fmt
    scale = q.expanded_scale().double()
    x64, back = x.double(), q.dequantize().double()
    scaled = x64 / scale
    inside = scaled.abs() < f.max + f.spacing(f.max) / 2  # beyond that, rounding cannot reach: saturation
    bound = torch.maximum(x64.abs() * f.eps / 2, scale * f.smallest_subnormal / 2) * (1 + 1e-6)
    assert ((back - x64).abs() <= bound)[inside].all()
    if (~inside).any():  # only MX (floor rule) can push a block's largest values past max
        assert recipe == "mx"
        assert torch.equal(back[~inside].abs(), (f.max * scale)[~inside])
    assert q.data.shape == x.shape


def test_error_shrinks_with_mantissa_bits_and_finer_scales() -> None:
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(2))
    snr = {
        name: fp8.error_stats(x, fp8.quantize(x, name))["snr_db"]
        for name in ("tensorwise", "blockwise", "mxfp8", "mxfp4", "nvfp4")
    }
    e5m2 = fp8.error_stats(x, fp8.quantize(x, "tensorwise", "e5m2"))["snr_db"]
    assert snr["blockwise"] > snr["tensorwise"] > e5m2  # E4M3 has one more mantissa bit than E5M2
    assert min(snr["mxfp8"], snr["blockwise"]) > max(snr["mxfp4"], snr["nvfp4"]) + 6  # 8 bits beat 4 bits
    assert snr["nvfp4"] > snr["mxfp4"]  # finer blocks (16) with finer (E4M3) scales


@pytest.mark.parametrize("fmt, emax", [("e4m3", 8), ("e5m2", 15), ("e2m1", 2), ("e2m3", 2), ("e3m2", 4)])
def test_mx_scales_are_powers_of_two_from_the_spec_rule(fmt: str, emax: int) -> None:
    """OCP MX v1.0 §6.3: X = 2^(floor(log2 max|V|) - emax_elem), stored as E8M0; elements are V / X."""
    x = wide_tensor(64, 256)
    q = fp8.quantize(x, "mx", fmt)
    assert q.scale.dtype == torch.float8_e8m0fnu and q.scale.shape == (64, 8)
    s = q.scale.double().numpy()
    mantissa, _ = np.frexp(s)
    assert (mantissa == 0.5).all()
    amax = x.double().reshape(64, 8, 32).abs().amax(-1).numpy()
    assert np.array_equal(np.log2(s), np.floor(np.log2(amax)) - emax)
    assert formats.get(fmt).emax == emax
    # elements: V / X rounded to the element format, saturating (independent: ml_dtypes or formats)
    scaled = (x.double() / q.expanded_scale().double()).numpy()
    f = formats.get(fmt)
    if f.ml_dtype is not None:
        want = np.clip(scaled, -f.max, f.max).astype(np.float32).astype(f.ml_dtype).astype(np.float64)
    else:
        want = f.round(scaled, saturate=True)
    assert np.array_equal(q.data.double().numpy(), want)


def test_mx_special_blocks() -> None:
    x = torch.ones(4, 32)
    x[0] = 0.0  # no amax: the smallest scale, 2^-127
    x[1, 3] = math.nan  # NaN anywhere: the block's scale is NaN (0xFF)
    x[2] *= 2.0**200 / 2.0**80  # huge: exponent clamped to 127
    x[3] *= 1e-38  # tiny: exponent clamped to -127
    q = fp8.quantize(x, "mxfp8")
    s = q.scale.float()
    assert s[0, 0] == 2.0**-127 and torch.isnan(s[1, 0]) and s[2, 0] == 2.0**112
    assert s[3, 0] == 2.0**-127 and q.scale.view(torch.uint8)[1, 0] == 0xFF
    assert torch.isnan(q.dequantize()[1]).all() and (q.dequantize()[0] == 0).all()


def test_mx_rceil_never_saturates_and_floor_may() -> None:
    x = torch.full((1, 32), 500.0)  # floor: X = 2^(8 - 8) = 1, 500 > 448 saturates; rceil: X = 2
    floor_q, rceil_q = fp8.quantize(x, "mxfp8"), fp8.quantize(x, "mxfp8", mx_scale_rounding="rceil")
    assert floor_q.scale.float().item() == 1.0 and rceil_q.scale.float().item() == 2.0
    assert fp8.error_stats(x, floor_q)["saturated"] == 1.0 and fp8.error_stats(x, rceil_q)["saturated"] == 0.0
    with pytest.raises(ValueError, match="floor, rceil"):
        fp8.quantize(x, "mxfp8", mx_scale_rounding="round")


def test_nvfp4_is_the_nvfp4_modules_quantiser_along_any_axis() -> None:
    """recipe "nvfp4" delegates to mpcourse.fp8.nvfp4 (TE's arithmetic: s_dec = 1 / (2688 / amax) and
    reciprocal block scales), so the bits are the same; along axis 0 they are those of the transpose.
    (tests/test_fp8_conformance.py checks both against a reference written from the paper.)"""
    from mpcourse.fp8 import nvfp4

    x = wide_tensor(32, 64, seed=3)
    for q, ref in (
        (fp8.quantize(x, "nvfp4"), nvfp4.quantize(x)),
        (fp8.quantize(x, "nvfp4", axis=0), nvfp4.quantize(x.t().contiguous())),
    ):
        flip = (lambda t: t.t()) if q.axis == 0 else (lambda t: t)
        assert torch.equal(flip(q.data), ref.data)
        assert torch.equal(flip(q.scale).view(torch.uint8), ref.scale.view(torch.uint8))
        assert torch.equal(q.tensor_scale, ref.tensor_scale) and q.tensor_scale.dtype == torch.float32
        assert torch.equal(flip(q.dequantize()), ref.dequantize())
        assert (q.recipe, q.fmt.name, q.block_size, q.scale.dtype) == (
            "nvfp4",
            "float4_e2m1fn",
            16,
            torch.float8_e4m3fn,
        )
    assert fp8.quantize(x, "nvfp4", axis=0).scale.shape == (2, 64)
    three_d = wide_tensor(6, 64, seed=4).reshape(2, 3, 64)
    assert torch.equal(fp8.quantize(three_d, "nvfp4").data, nvfp4.quantize(three_d).data)


def test_blockwise_2d_tiles_and_axis() -> None:
    x = wide_tensor(256, 384)
    q = fp8.quantize(x, "block_128x128")
    assert q.scale.shape == (2, 3)
    tile_amax = x.reshape(2, 128, 3, 128).abs().amax(dim=(1, 3))
    assert torch.allclose(q.scale, tile_amax / 448.0)
    # quantising along axis 0 is quantising the transpose along its last axis
    q0, qt = fp8.quantize(x, "blockwise", axis=0), fp8.quantize(x.t(), "blockwise")
    assert torch.equal(q0.dequantize(), qt.dequantize().t()) and q0.scale.shape == (2, 384)
    r0, rt = fp8.quantize(x, "rowwise", axis=0), fp8.quantize(x.t(), "rowwise")
    assert torch.equal(r0.dequantize(), rt.dequantize().t()) and r0.scale.shape == (1, 384)


def test_pow2_scales_are_powers_of_two_and_never_overflow() -> None:
    x = wide_tensor()
    q = fp8.quantize(x, "rowwise", pow2_scales=True)
    mantissa, _ = torch.frexp(q.scale.double())
    assert (mantissa == 0.5).all()
    assert (q.scale * 448 >= x.abs().amax(1, keepdim=True)).all()
    assert fp8.error_stats(x, q)["saturated"] == 0.0


def test_e8m0_bits_decode_as_torch_does() -> None:
    patterns = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e8m0fnu)
    ours, theirs = fp8.quantized.e8m0_to_float(patterns), patterns.float()
    assert torch.equal(ours[:255], theirs[:255]) and torch.isnan(ours[255]) and torch.isnan(theirs[255])
    powers = torch.cat([pow2(torch.arange(-127, 128)), torch.tensor([math.nan])])
    assert torch.equal(
        fp8.quantized.float_to_e8m0(powers).view(torch.uint8), torch.arange(256).to(torch.uint8)
    )


def test_pow2_is_exact() -> None:
    e = torch.arange(-149, 128)
    assert torch.equal(pow2(e).double(), torch.tensor([2.0 ** int(k) for k in e], dtype=torch.float64))


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e4m3fnuz", "e5m2fnuz"])
def test_cast_matches_ml_dtypes(fmt: str) -> None:
    """In range: round to nearest even, as ml_dtypes; out of range: ±max when saturating, else ml_dtypes's NaN/inf."""
    f = formats.get(fmt)
    gen = torch.Generator().manual_seed(1)
    v = torch.cat(
        [
            torch.randn(20000, generator=gen) * f.max / 4,
            torch.randn(2000, generator=gen) * f.tiny,
            torch.tensor([f.max * 1.01, -f.max * 3, math.inf, -math.inf, math.nan, 0.0, -0.0]),
        ]
    )
    sat = fp8.cast(v, f, saturate=True).double().numpy()
    nonsat = fp8.cast(v, f, saturate=False).double().numpy()
    vn = v.numpy()
    want_nonsat = vn.astype(f.ml_dtype).astype(np.float64)
    want_sat = (
        np.where(np.isnan(vn), np.nan, np.clip(vn, -f.max, f.max)).astype(f.ml_dtype).astype(np.float64)
    )
    np.testing.assert_array_equal(sat, want_sat)
    limit = f.max + f.spacing(f.max) / 2  # values from here on round beyond max: overflow
    finite = np.isfinite(vn) & (np.abs(vn) < limit)
    np.testing.assert_array_equal(nonsat[finite], want_nonsat[finite])
    assert (np.abs(vn) > f.max).sum() > (np.abs(vn) >= limit).sum() > 0  # both cases are exercised
    overflow = ~finite & ~np.isnan(vn)
    if f.has_inf:
        assert np.array_equal(nonsat[overflow], np.sign(vn[overflow]) * np.inf)
    else:
        assert np.isnan(nonsat[overflow]).all()


def test_saturate_false_gives_nan_or_inf_per_format() -> None:
    big = torch.full((4, 4), 1e6)
    assert (
        torch.isnan(fp8.quantize(big * 0 + big, "tensorwise", saturate=False).data.float()).sum() == 0
    )  # scaled: fine
    q = fp8.DelayedScaler("e4m3").quantize(big, saturate=False)  # scale 1 at the first step: overflow
    assert torch.isnan(q.data.float()).all()
    q = fp8.DelayedScaler("e5m2").quantize(big, saturate=False)
    assert torch.isinf(q.data.float()).all()
    q = fp8.DelayedScaler("e4m3").quantize(big)
    assert (q.data.float() == 448).all()


# ---- delayed scaling ---------------------------------------------------------------------------------


def te_kernel(
    history: list[float], scale: float, algo: str, margin: int, fp8_max: float
) -> tuple[list[float], float]:
    """Transformer Engine's amax_and_scale_update kernel (delayed_scaling.cu), transcribed loop by loop."""
    length = len(history)
    last = history[0]
    amax = 0.0
    updated = [0.0] * length
    for i in range(length):
        a = history[i + 1] if i < length - 1 else last
        amax = max(amax, a)
        updated[i] = a if i > 0 else 0.0
    if algo == "most_recent":
        amax = last
    scaled_max = fp8_max * 2.0 ** (-margin)
    new_scale = scaled_max / amax if (math.isfinite(amax) and amax > 0) else scale
    return updated, new_scale


@pytest.mark.parametrize(
    "length, algo, margin", [(1, "max", 0), (3, "max", 0), (5, "most_recent", 1), (16, "max", 2)]
)
def test_delayed_scaler_matches_transformer_engine_kernel(length: int, algo: str, margin: int) -> None:
    rng = np.random.default_rng(length + margin)
    amaxes = list(rng.lognormal(0, 2, 40).astype(np.float32))
    amaxes[7] = 0.0
    amaxes[20] = math.inf
    scaler = fp8.DelayedScaler("e4m3", amax_history_len=length, amax_compute_algo=algo, margin=margin)
    history, scale = [0.0] * length, 1.0
    for amax in amaxes:
        assert scaler.scale.item() == pytest.approx(scale, rel=1e-6)
        q = scaler.quantize(
            torch.full((3,), float(amax)) if math.isfinite(amax) else torch.tensor([math.inf, 1.0])
        )
        assert q.scale.item() == pytest.approx(1 / scale, rel=1e-6)  # the scale chosen *before* this step
        history[0] = max(history[0], float(amax))
        history, scale = te_kernel(history, scale, algo, margin, 448.0)
        np.testing.assert_allclose(scaler.amax_history.numpy(), history, rtol=1e-6)


def test_delayed_scaling_defaults_are_transformer_engines() -> None:
    recipe = fp8.DelayedScaling()
    assert (recipe.margin, recipe.amax_history_len, recipe.amax_compute_algo, recipe.fp8_format) == (
        0,
        1024,
        "max",
        "hybrid",
    )
    assert recipe.forward_format.name == "float8_e4m3fn" and recipe.backward_format.name == "float8_e5m2"
    assert recipe.scaler().scale.item() == 1.0 and recipe.scaler().amax_history.numel() == 1024
    assert recipe.scaler(backward=True).fmt.name == "float8_e5m2"


def test_delayed_scaling_is_delayed() -> None:
    """A step is cast with the scale from earlier steps: a sudden larger tensor saturates at first."""
    scaler = fp8.DelayedScaler("e4m3", amax_history_len=4)
    scaler.quantize(torch.ones(8))  # step 0: scale 1; history learns amax 1
    q = scaler.quantize(torch.full((8,), 10.0))  # step 1: scale from amax 1 -> 10 x 448 overflows
    assert q.scale.item() == pytest.approx(1 / 448) and (q.data.float() == 448).all()
    q = scaler.quantize(torch.full((8,), 10.0))  # step 2: the history now holds 10
    assert q.scale.item() == pytest.approx(10 / 448) and (q.data.float() == 448).all()
    for _ in range(4):
        scaler.quantize(torch.full((8,), 0.1))
    assert scaler.scale_inv.item() == pytest.approx(0.1 / 448, rel=1e-6)  # 10 left the window after 4 steps


def test_delayed_scaler_callable_algo_and_bad_arguments() -> None:
    scaler = fp8.DelayedScaler("e4m3", amax_history_len=4, amax_compute_algo=lambda h: h.mean())
    scaler.record(8.0)
    scaler.update()
    assert scaler.scale.item() == pytest.approx(448 / 2.0)
    with pytest.raises(ValueError, match="max, most_recent"):
        fp8.DelayedScaler("e4m3", amax_compute_algo="mean")
    with pytest.raises(ValueError, match="positive integer"):
        fp8.DelayedScaling(amax_history_len=0)
    with pytest.raises(ValueError, match="hybrid, e4m3"):
        fp8.DelayedScaling(fp8_format="e5m2")
    with pytest.raises(ValueError, match="stores fp8"):
        fp8.DelayedScaler("e2m1")


# ---- bookkeeping and errors --------------------------------------------------------------------------


def test_bits_per_element_counts_the_scales() -> None:
    x = torch.randn(128, 256)
    bits = {
        name: fp8.quantize(x, name).bits_per_element
        for name in ("tensorwise", "rowwise", "blockwise", "block_128x128", "mxfp8", "mxfp4", "nvfp4")
    }
    n = x.numel()
    assert bits["tensorwise"] == 8 + 32 / n
    assert bits["rowwise"] == 8 + 32 / 256
    assert bits["blockwise"] == 8 + 32 / 128
    assert bits["block_128x128"] == 8 + 32 / 128**2
    assert bits["mxfp8"] == 8.25 and bits["mxfp4"] == 4.25
    assert bits["nvfp4"] == 4.5 + 32 / n
    assert fp8.quantize(x, "mxfp8").nbytes == n + n // 32


def test_zero_and_nonfinite_tensors() -> None:
    q = fp8.quantize(torch.zeros(4, 128), "tensorwise")
    assert q.scale.item() == 1.0 and (q.dequantize() == 0).all()
    x = torch.ones(4, 128)
    x[0, 0] = math.inf  # TE keeps scale 1 for a non-finite amax; saturating, inf becomes 448
    assert fp8.quantize(x, "tensorwise").scale.item() == 1.0
    stats = fp8.error_stats(torch.ones(4, 128), fp8.quantize(torch.ones(4, 128), "mxfp8"))
    assert stats["snr_db"] == math.inf and stats["relative_error"] == 0.0


def test_error_stats_counts_underflow() -> None:
    x = torch.tensor([1000.0, 1e-5, 2e-5, 1.0])
    q = fp8.quantize(x, "tensorwise")  # scale 1000/448: 1e-5 / 2.23 is far below E4M3's 2^-9
    stats = fp8.error_stats(x, q)
    assert stats["underflow"] == 0.5 and stats["saturated"] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(recipe="per_block"), "accepted: tensorwise, delayed, rowwise"),
        (dict(recipe="blockwise", block_size=100), "does not divide"),
        (dict(recipe="rowwise", block_size=32), "has no blocks"),
        (dict(recipe="delayed"), "scaler=DelayedScaler"),
        (dict(recipe="nvfp4", fmt="e4m3"), "float4_e2m1fn"),
        (dict(recipe="mxfp4", fmt="e4m3"), "means float4_e2m1fn"),
        (dict(recipe="block_1x128", block_size=64), "means blocks of 128"),
        (dict(recipe="mx", fmt="e8m0"), "stores elements in"),
        (dict(recipe="blockwise", block_size=0), "positive integer"),
        (dict(recipe="blockwise", block_size=True), "positive integer"),
        (
            dict(recipe="nvfp4", block_size=32),
            r"blocks of 16 elements, fixed by the format.*Accepted: 16 or None",
        ),
        (
            dict(recipe="mx", fmt="e4m3fnuz"),
            r"stores elements in float8_e4m3fn, float8_e5m2, .*float4_e2m1fn",
        ),
        (dict(recipe="delayed", fmt="e2m1"), "stores elements in float8_e4m3fn"),
        (dict(recipe="mx", fmt="e9m9"), "unknown floating-point format 'e9m9'. Accepted names"),
        (dict(recipe="mxfp8", mx_scale_rounding="ceil"), "accepted: floor, rceil"),
        (dict(recipe="mxfp8", axis=2), r"axis=2 is not a dimension.*accepted: -2 to 1"),
    ],
)
def test_bad_arguments_name_what_is_accepted(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        fp8.quantize(torch.randn(4, 256), **kwargs)


def test_type_errors() -> None:
    with pytest.raises(TypeError, match=r"floating-point tensor \(a torch.Tensor of float32.*x.float\(\)"):
        fp8.quantize(torch.arange(8), "tensorwise")
    with pytest.raises(TypeError, match=r"got ndarray float32; convert it with torch.as_tensor"):
        fp8.quantize(np.ones((4, 32), np.float32), "mxfp8")
    with pytest.raises(TypeError, match=r"recipe must be a name \(a str\), got int 3; accepted: tensorwise"):
        fp8.resolve(3)
    with pytest.raises(ValueError, match="NaN or inf"):
        fp8.quantize(torch.tensor([[math.inf] + [1.0] * 15]), "nvfp4")
    with pytest.raises(ValueError, match="2-D"):
        fp8.quantize(torch.randn(2, 128, 128), "blockwise_2d")
    with pytest.raises(ValueError, match="2-D tensor"):
        fp8.quantize(torch.randn(2, 128, 128), "blockwise", axis=0)


def test_fake_quantize_keeps_dtype_and_every_recipe_is_described() -> None:
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    assert fp8.fake_quantize(x, "mxfp8").dtype == torch.bfloat16
    for spec in fp8.RECIPES.values():
        assert spec.description and spec.sources
    for alias, (target, fmt, block) in fp8.ALIASES.items():
        spec, f, b = fp8.resolve(alias)
        assert spec.name == target and (fmt is None or f.name == fmt) and (block is None or b == block)


@pytest.mark.parametrize(
    "recipe, block_size, shape, message",
    [
        # MX and NVFP4 fix their block size: the remedy is padding K, never another block size.
        (
            "mxfp8",
            None,
            (4, 100),
            r"blocks of 32 elements \(fixed by the OCP MX specification\).*K.*\(100\): pad K with zeros to 128",
        ),
        (
            "mxfp4",
            None,
            (4, 48),
            r"fixed by the OCP MX specification.*pad K with zeros to 64, the next multiple of 32",
        ),
        ("nvfp4", None, (4, 40), r"blocks of 16 elements \(fixed by NVFP4\).*pad K with zeros to 48"),
        (
            "mx",
            16,
            (4, 40),
            r"blocks of 16 elements \(the OCP MX specification fixes 32\).*pad K with zeros to 48",
        ),
        # fp32-scaled blocks: another block size is a remedy too, named only when one divides.
        (
            "blockwise",
            128,
            (4, 96),
            r"does not divide K, the length along the scaled axis \(96\); choose a block size "
            r"that divides 96, such as 16 or 32, or pad K with zeros to 128",
        ),
        (
            "blockwise",
            128,
            (4, 100),
            r"pad K with zeros to 128.*\(no power of two from 16 to 256 divides 100\)",
        ),
        (
            "blockwise_2d",
            128,
            (100, 128),
            r"does not divide the number of rows \(100\).*pad the rows with zeros to 128",
        ),
    ],
)
def test_a_block_size_that_does_not_divide_names_the_remedy(recipe, block_size, shape, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        fp8.quantize(torch.randn(*shape), recipe, block_size=block_size)
    if recipe in ("mxfp8", "mxfp4", "nvfp4", "mx"):
        assert "choose a block size" not in str(info.value) and "e.g." not in str(info.value)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("bogus",), {}, r"unknown scaling recipe 'bogus'; accepted: tensorwise, .*nvfp4 \(aliases: current"),
        (("nvfp4", "e4m3"), {}, r"recipe 'nvfp4' stores elements in float4_e2m1fn; got 'float8_e4m3fn'"),
        (("mxfp8", "e5m2"), {}, r"recipe 'mxfp8' means float8_e4m3fn elements.*Use recipe 'mx'"),
        (("nvfp4",), {"block_size": 8}, r"got block_size=8\. Accepted: 16 or None"),
        (("tensorwise",), {"block_size": 32}, "has no blocks; block_size is only for blockwise"),
    ],
)
def test_resolve_names_what_is_accepted(args, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        fp8.resolve(*args, **kwargs)
    spec, fmt, block = fp8.resolve("nvfp4", block_size=16)
    assert (spec.name, fmt.name, block) == ("nvfp4", "float4_e2m1fn", 16)
