"""The checks of chapter loss_scaling: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from mpcourse import formats
from mpcourse.exercises import ExerciseFailed, check

# ---- dynamic scaler ------------------------------------------------------------------------------


def make_scaler_class(mistake: str | None = None):
    class MyDynamicScaler:
        def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
            self.scale_factor = float(init_scale)
            self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
            self.growth_interval = growth_interval
            self.growth_tracker = 0
            self.found_inf = False
            self.unscaled = False

        def scale(self, loss):
            return loss * self.scale_factor

        def unscale_(self, optimizer):
            if self.unscaled and mistake not in ("unscale-twice", "no-refusal"):
                raise RuntimeError(
                    "unscale_() has already been called on this optimizer since the last update()."
                )
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    bad = torch.isinf(p.grad).any() if mistake == "isinf" else ~torch.isfinite(p.grad).all()
                    if bad:
                        self.found_inf = True
                    p.grad.mul_(1.0 / self.scale_factor)
            self.unscaled = True

        def step(self, optimizer):
            if not self.unscaled or mistake == "unscale-twice":
                self.unscale_(optimizer)
            if not self.found_inf or mistake == "no-skip":
                optimizer.step()

        def update(self):
            if self.found_inf:
                self.scale_factor *= self.backoff_factor if mistake != "hard-coded-half" else 0.5
                if mistake != "keep-tracker":
                    self.growth_tracker = 0
            else:
                self.growth_tracker += 1
                limit = {"off-by-one": self.growth_interval - 1, "late-growth": self.growth_interval + 1}.get(
                    mistake, self.growth_interval
                )
                if self.growth_tracker >= limit:
                    self.scale_factor *= 2.0 if mistake == "hard-coded-double" else self.growth_factor
                    if mistake != "no-reset-after-growth":
                        self.growth_tracker = 0
            if mistake != "sticky-flag":
                self.found_inf = False
            self.unscaled = False

        def get_scale(self):
            return self.scale_factor

    return MyDynamicScaler


def test_dynamic_scaler_reference_passes_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    check("loss_scaling-dynamic-scaler", make_scaler_class())
    out, err = capsys.readouterr()
    assert "correct" in out and err == ""


class TensorScaler:
    """Another valid design: the scale a float32 tensor (as GradScaler keeps it), one flat finiteness test
    over all gradients, division instead of multiplication, a tracker that counts down."""

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.s = torch.tensor(float(init_scale))
        self.factors = (growth_factor, backoff_factor)
        self.interval = growth_interval
        self.left = growth_interval
        self.bad, self.done = False, False

    def scale(self, loss):
        return loss * self.s

    def unscale_(self, optimizer):
        if self.done:
            raise RuntimeError("already unscaled")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.bad = not bool(torch.cat([g.reshape(-1) for g in grads]).isfinite().all())
        for g in grads:
            g.div_(self.s)
        self.done = True

    def step(self, optimizer):
        if not self.done:
            self.unscale_(optimizer)
        if not self.bad:
            optimizer.step()

    def update(self):
        if self.bad:
            self.s = self.s * self.factors[1]
            self.left = self.interval
        else:
            self.left -= 1
            if self.left == 0:
                self.s = self.s * self.factors[0]
                self.left = self.interval
        self.bad = self.done = False

    def get_scale(self):
        return self.s.item()


def test_dynamic_scaler_accepts_another_valid_design() -> None:
    check("loss_scaling-dynamic-scaler", TensorScaler)


class DelegatingScaler:
    """Right behaviour, no algorithm: every method forwards to a GradScaler built inside."""

    def __init__(self, **settings):
        self.inner = torch.amp.GradScaler("cpu", **settings)

    def scale(self, loss):
        return self.inner.scale(loss)

    def unscale_(self, optimizer):
        self.inner.unscale_(optimizer)

    def step(self, optimizer):
        self.inner.step(optimizer)

    def update(self):
        self.inner.update()

    def get_scale(self):
        return self.inner.get_scale()


def test_the_course_scaler_and_a_wrapped_gradscaler_are_refused() -> None:
    from mpcourse.loss_scaling import DynamicLossScaler

    with pytest.raises(ExerciseFailed, match="this is the course's DynamicLossScaler itself"):
        check("loss_scaling-dynamic-scaler", DynamicLossScaler)
    with pytest.raises(
        ExerciseFailed, match="your scaler builds a torch.amp.GradScaler and lets it do the work"
    ):
        check("loss_scaling-dynamic-scaler", DelegatingScaler)

    class Delegating2(DelegatingScaler):
        def __init__(self, **settings):
            self.inner = DynamicLossScaler(**settings)

    with pytest.raises(ExerciseFailed, match="builds the course's DynamicLossScaler"):
        check("loss_scaling-dynamic-scaler", Delegating2)


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("no-skip", "look at when step\\(\\) may call the optimizer"),
        ("isinf", "Does it see NaN as well as inf"),
        ("off-by-one", "compares the count with growth_interval"),
        ("keep-tracker", "when the count starts again"),
        ("sticky-flag", "what each iteration leaves behind"),
        ("unscale-twice", "how many times one iteration divides"),
        ("hard-coded-half", "the factor update\\(\\) applies then"),
        ("hard-coded-double", "when update\\(\\) counts a clean step"),
        ("late-growth", "when update\\(\\) counts a clean step"),
        ("no-reset-after-growth", "when the count starts again"),
    ],
)
def test_dynamic_scaler_mistakes_fail_with_a_hint(mistake: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message) as err:
        check("loss_scaling-dynamic-scaler", make_scaler_class(mistake))
    assert "first divergence" in str(err.value) and "sequence" in str(err.value)


def test_a_scaler_that_unscales_twice_in_one_iteration_is_refused() -> None:
    # The comparisons never call unscale_ twice; the check asks for GradScaler's RuntimeError itself.
    with pytest.raises(ExerciseFailed, match="a second unscale_\\(\\) in the same iteration went through"):
        check("loss_scaling-dynamic-scaler", make_scaler_class("no-refusal"))


@pytest.mark.parametrize("mistake", ["off-by-one", "isinf", "hard-coded-half"])
def test_dynamic_scaler_verdicts_are_reproducible(mistake: str) -> None:
    """Issue 15: the sequences were drawn afresh on every run. Now the same answer gets the same message."""
    messages = []
    for _ in range(2):
        with pytest.raises(ExerciseFailed) as err:
            check("loss_scaling-dynamic-scaler", make_scaler_class(mistake))
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_gradscaler_itself_is_refused() -> None:
    with pytest.raises(ExerciseFailed, match="torch.amp.GradScaler itself"):
        check("loss_scaling-dynamic-scaler", lambda **kw: torch.amp.GradScaler("cpu", **kw))


def test_a_scaler_without_methods_is_refused() -> None:
    class Empty:
        def __init__(self, **kw):
            pass

    with pytest.raises(ExerciseFailed, match="no scale, unscale_, step, update, get_scale"):
        check("loss_scaling-dynamic-scaler", Empty)


# ---- static scale --------------------------------------------------------------------------------


def choose_static_scale(hist, fmt="fp16", margin=1):
    if hist.above:
        raise ValueError("values above the histogram's last binade: their size is unknown")
    top = int(hist.exponents[hist.counts > 0].max())
    return math.floor(math.log2(formats.get(fmt).max)) - margin - top - 1


def test_static_scale_reference_passes_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    check("loss_scaling-static-scale", choose_static_scale)
    assert capsys.readouterr().err == ""


def choose_static_scale_by_search(hist, fmt="fp16", margin=1):
    """Another valid method: try scales downwards until the largest value fits, with frexp for the exponents."""
    if hist.above > 0:
        raise ValueError("unknown sizes above the last binade")
    limit = formats.get(fmt).max / 2**margin
    top = max(int(k) for k, c in zip(hist.exponents, hist.counts) if c)
    s = 300
    while 2.0 ** (top + 1 + s) > limit:
        s -= 1
    return s


def test_static_scale_accepts_a_search() -> None:
    check("loss_scaling-static-scale", choose_static_scale_by_search)


def _static_wrong(kind: str):
    def f(hist, fmt="fp16", margin=1):
        if kind != "no-raise" and hist.above:
            raise ValueError("unknown")
        nonempty = hist.exponents[hist.counts > 0]
        top = (
            int(hist.exponents[-1])
            if kind == "last-bin"
            else int(nonempty.min() if kind == "lowest" else nonempty.max())
        )
        log2max = (
            math.ceil(math.log2(formats.get(fmt).max))
            if kind == "ceil"
            else math.floor(math.log2(formats.get(fmt).max))
        )
        s = log2max - (0 if kind == "no-margin" else margin) - top - (0 if kind == "upper-edge" else 1)
        if kind == "power":
            return 2.0**s
        if kind == "fp16-only":
            return 15 - margin - top - 1
        return s

    return f


@pytest.mark.parametrize(
    "kind, message",
    [
        ("ceil", "log2\\(max\\) rounded up"),
        ("upper-edge", "upper edge forgotten"),
        ("no-margin", "margin ignored"),
        ("last-bin", "whether or not it holds any value"),
        ("lowest", "lowest non-empty binade"),
        ("power", "the scale itself"),
        ("fp16-only", "bf16|e5m2"),
        ("no-raise", "raise ValueError"),
    ],
)
def test_static_scale_mistakes_fail(kind: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling-static-scale", _static_wrong(kind))


# ---- reading a scaler's log -----------------------------------------------------------------------

FP16 = formats.get("fp16")
OVERFLOW = FP16.max + FP16.spacing(FP16.max) / 2  # 65520: halfway to 2^16, a tie that goes to inf


def read_scaler_log(init_scale, scales):
    used = [init_scale, *scales[:-1]]
    skipped = [t for t, (s, after) in enumerate(zip(used, scales), 1) if after < s]
    low = max((OVERFLOW / used[t - 1] for t in skipped), default=0.0)
    high = min((OVERFLOW / s for t, s in enumerate(used, 1) if t not in skipped), default=math.inf)
    return skipped, low, high


def read_scaler_log_numpy(init_scale, scales):
    """Another valid method: numpy arrays, and the threshold found by asking torch which fp16 value is inf."""
    candidates = torch.arange(65504, 65537, dtype=torch.float32)
    threshold = candidates[torch.isinf(candidates.half())][0].item()  # 65520
    after = np.asarray(scales, dtype=float)
    used = np.concatenate([[init_scale], after[:-1]])
    skip = after < used
    low = (threshold / used[skip]).max() if skip.any() else 0.0
    high = (threshold / used[~skip]).min() if (~skip).any() else np.inf
    return (np.flatnonzero(skip) + 1).tolist(), float(low), float(high)


def read_scaler_log_bisection(init_scale, scales):
    """Another valid method: the threshold found by bisection with torch's float64-to-fp16 conversion, which
    goes through fp32 and so ends a hair below 65520 (65519.998...)."""
    lo, hi = 65504.0, 65536.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if torch.isinf(torch.tensor(mid, dtype=torch.float64).half()) else (mid, hi)
    assert 0 < OVERFLOW - hi < 0.01  # the double rounding the check must tolerate
    return _read_with(hi)(init_scale, scales)


def _read_with(threshold: float, *, own_entry: bool = False):
    def fn(init_scale, scales):
        before = [init_scale, *scales[:-1]]
        used = list(scales) if own_entry else before
        skipped = [t for t, (s, after) in enumerate(zip(before, scales), 1) if after < s]
        low = max((threshold / used[t - 1] for t in skipped), default=0.0)
        high = min((threshold / s for t, s in enumerate(used, 1) if t not in skipped), default=math.inf)
        return skipped, low, high

    return fn


@pytest.mark.parametrize("fn", [read_scaler_log, read_scaler_log_numpy, read_scaler_log_bisection])
def test_read_log_accepts_correct_readings(fn, capsys: pytest.CaptureFixture[str]) -> None:
    check("loss_scaling-read-log", fn)
    assert capsys.readouterr().err == ""


def test_the_log_cases_come_from_real_gradscaler_runs() -> None:
    from mpcourse.exercises.loss_scaling import _LOG_CASES, _gradscaler_log

    for case in _LOG_CASES:
        _, low, high = read_scaler_log(case["init_scale"], _gradscaler_log(case))
        assert low <= case["g"] < high
    at_threshold = next(c for c in _LOG_CASES if c["g"] * 2**12 == OVERFLOW)
    assert read_scaler_log(at_threshold["init_scale"], _gradscaler_log(at_threshold))[1] == at_threshold["g"]


def _misread(kind: str):
    def fn(init_scale, scales):
        threshold = {"max": 65504.0, "2^16": 65536.0}.get(kind, OVERFLOW)
        used = list(scales) if kind == "own-entry" else [init_scale, *scales[:-1]]
        before = [init_scale, *scales[:-1]]
        if kind == "changed":
            skipped = [t for t, (s, a) in enumerate(zip(before, scales), 1) if a != s]
        elif kind == "no-first":
            skipped = [t for t in range(2, len(scales) + 1) if scales[t - 1] < scales[t - 2]]
        else:
            skipped = [t for t, (s, a) in enumerate(zip(before, scales), 1) if a < s]
        lows = [threshold / used[t - 1] for t in skipped]
        highs = [threshold / s for t, s in enumerate(used, 1) if t not in skipped]
        if kind == "weakest":
            low, high = min(lows, default=0.0), max(highs, default=math.inf)
        else:
            low, high = max(lows, default=0.0), min(highs, default=math.inf)
        if kind == "zero-based":
            skipped = [t - 1 for t in skipped]
        if kind == "mask":
            return [t in skipped for t in range(1, len(scales) + 1)], low, high
        if kind == "swapped":
            return skipped, high, low
        if kind == "two-values":
            return low, high
        return skipped, low, high

    return fn


@pytest.mark.parametrize(
    "kind, message",
    [
        ("max", "fp16's max used as the overflow threshold"),
        ("2^16", "2\\^16 used as the overflow threshold"),
        ("own-entry", "each step paired with the scale logged after it"),
        ("weakest", "not the tightest"),
        ("changed", "were clean: the scale did not go down"),
        ("no-first", "step 1 is missing"),
        ("zero-based", "one lower than the steps"),
        ("mask", "booleans, one per step"),
        ("swapped", "above high"),
        ("two-values", "[Rr]eturn three things"),
    ],
)
def test_read_log_rejects_realistic_misreadings(kind: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling-read-log", _misread(kind))


@pytest.mark.parametrize("threshold", [65519.0, 65519.5, 65528.0, OVERFLOW * (1 + 1e-5)])
def test_read_log_names_another_overflow_threshold_and_what_fp16_s_is_made_of(threshold: float) -> None:
    with pytest.raises(ExerciseFailed, match="for an overflow threshold of 655[12]") as failed:
        check("loss_scaling-read-log", _read_with(threshold))
    message = str(failed.value)
    assert "the smallest value that fp16 rounds to inf" in message and "largest value" in message
    assert not re.search(r"(?<![\d.])65520(?![\d.])", message)  # the threshold itself is not given away


def test_read_log_names_a_misreading_made_with_the_bisected_threshold() -> None:
    bisected = read_scaler_log_bisection(1.0, [1.0])[2]  # the threshold itself, over a scale of 1
    with pytest.raises(ExerciseFailed, match="each step paired with the scale logged after it"):
        check("loss_scaling-read-log", _read_with(bisected, own_entry=True))


# ---- underflow share -----------------------------------------------------------------------------


def underflow_share(values, scale):
    scaled = values * scale
    return ((scaled.half() == 0) & (values != 0)).sum().item() / values.numel()


def underflow_share_by_threshold(values, scale):
    lost = (values != 0) & (
        (values * scale).abs() <= 2.0**-25
    )  # a tie at 2^-25 goes to the even neighbour, 0
    return float(lost.float().mean())


def underflow_share_numpy(values, scale):
    v = values.numpy().astype(np.float32) * np.float32(scale)
    return float(np.count_nonzero((v.astype(np.float16) == 0) & (v != 0)) / v.size)


@pytest.mark.parametrize("fn", [underflow_share, underflow_share_by_threshold, underflow_share_numpy])
def test_underflow_share_valid_answers_pass(fn) -> None:
    check("loss_scaling-underflow-share", fn)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda v, s: float(((v * s).half() == 0).float().mean()), "counts the exact zeros"),
        (lambda v, s: float(((v * s).abs() < 2.0**-24)[v != 0].sum()) / v.numel(), "round up to 2\\^-24"),
        (lambda v, s: float(((v * s).abs() < 2.0**-25)[v != 0].sum()) / v.numel(), "a tie"),
        (lambda v, s: float((v.half() == 0)[v != 0].sum()) / v.numel(), "ignores the scale"),
        (lambda v, s: float(((v.half() * s) == 0)[v != 0].sum()) / v.numel(), "before multiplying"),
        (lambda v, s: float(((v * s).half() == 0)[v != 0].float().mean()), "fraction of all values"),
        (lambda v, s: int(((v * s).half() == 0)[v != 0].sum()), "expected"),
        (lambda v, s: ((v.mul_(s).half() == 0) & (v != 0)).sum().item() / v.numel(), "changed the values"),
    ],
)
def test_underflow_share_mistakes_fail(fn, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling-underflow-share", fn)
