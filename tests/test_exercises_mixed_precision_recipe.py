"""The checks of chapter mixed_precision_recipe: reference solutions and valid alternatives pass,
realistic mistakes fail with a diagnosis that names them, and the checks are reproducible."""

from __future__ import annotations

import itertools
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpcourse import formats, memory
from mpcourse.exercises import ExerciseFailed, check
from mpcourse.exercises import mixed_precision_recipe as checks
from mpcourse.train.step import train_step

SLUG = "mixed_precision_recipe"
MOVED, PROMOTE, LARGEST, STEP = (
    f"{SLUG}-{name}" for name in ("moved-fraction", "promote-interval", "largest-model", "train-step")
)
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / f"{SLUG}.ipynb"


def _solution_lines() -> list[str]:
    """The reference solutions' lines (at least 12 characters, not comments), as the hint test reads them."""
    import nbformat

    from mpcourse.course.student import solution_lines

    nb = nbformat.read(NOTEBOOK, as_version=4)
    lines = [
        line.strip() for cell in nb.cells if cell.cell_type == "code" for line in solution_lines(cell.source)
    ]
    return ["".join(line.split()) for line in lines if len(line) >= 12 and not line.startswith("#")]


SOLUTION_LINES = _solution_lines()


def _case_pattern(label: str) -> str:
    """A regular expression for every case the check of ``label`` names in its messages."""
    if label == MOVED:
        cases = [re.escape(c[0]) for c in checks.MOVED_CASES]
    elif label == PROMOTE:
        cases = [re.escape(c[0]) for c in checks.promote_cases()]
    elif label == LARGEST:
        cases = [rf"{re.escape(c[0])}(?:, recipe '\w+')?" for c in checks.LARGEST_CASES]
    else:
        cases = [rf"{re.escape(c[0])}, step \d+(?: \(support: [^)]*\))?" for c in checks.STEP_DEVICES]
    return "|".join(f"(?:{c})" for c in cases)


def _assert_case_then_comma(label: str, message: str) -> None:
    """A message that opens with its case ("for <case>") separates the case from the verdict by a comma."""
    if not message.startswith(f"{label}: for "):
        return
    opening = rf"{re.escape(label)}: for (?:{_case_pattern(label)}), (?!recipe '|step \d)\S"
    assert re.match(opening, message), f"no comma between the case and the verdict: {message!r}"


def rejects(label: str, answer, match: str) -> str:
    """Check that ``answer`` fails with a message matching ``match`` that gives away no solution line,
    and that names its case with a comma before the verdict."""
    with pytest.raises(ExerciseFailed, match=match) as failure:
        check(label, answer)
    message = "".join(str(failure.value).split())
    leaked = [line for line in SOLUTION_LINES if line in message]
    assert not leaked, f"the failure message of {label} contains solution code: {leaked}"
    _assert_case_then_comma(label, str(failure.value))
    return str(failure.value)


def accepts(label: str, answer, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that ``answer`` passes, printing the confirmation and nothing on stderr, without warnings
    (a warning in a notebook goes to stderr, which nbgrader scores as a failure)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(label, answer)
    out, err = capsys.readouterr()
    assert "correct" in out and err == ""
    assert not caught, [str(w.message) for w in caught]


def test_the_chapter_has_these_four_exercises() -> None:
    from mpcourse.exercises import labels

    assert labels(SLUG) == sorted([MOVED, PROMOTE, LARGEST, STEP])
    assert len(SOLUTION_LINES) > 20  # the notebook was read


# --- moved-fraction ---------------------------------------------------------------------------------


def moved_fraction(bound, lr, dtype):
    u = torch.tensor(lr, dtype=dtype).item()
    if u == 0.0:
        return 0.0
    m = -int(math.log2(torch.finfo(dtype).eps))
    limit = 2.0 ** math.ceil(math.log2(2.0 ** (m + 1) * u))
    return min(1.0, limit / bound)


def moved_by_binade_loop(bound, lr, dtype):
    """Another method: walk up the binades while half their gap is below the stored update."""
    info = torch.finfo(dtype)
    u = float(torch.tensor(lr, dtype=dtype))
    e = int(math.log2(info.tiny))  # the lowest normal binade; below it the gap is the same
    while 2.0 ** (e - (-int(math.log2(info.eps)))) / 2 < u and 2.0**e < bound:
        e += 1
    limit = 2.0**e if u > 2.0 ** (int(math.log2(info.tiny)) + math.log2(info.eps)) / 2 else 0.0
    return torch.tensor(min(1.0, limit / bound))  # a one-element tensor is accepted too


def moved_on_a_grid(bound, lr, dtype):
    """Another method: integrate over an evenly spaced grid of weights (no random numbers)."""
    w = (torch.linspace(0, bound, 2**21, dtype=torch.float64)[1:]).to(dtype)
    u = torch.tensor(lr, dtype=dtype)
    return float((((w + u) != w).double().mean() + ((w - u) != w).double().mean()) / 2)


@pytest.mark.parametrize("answer", [moved_fraction, moved_by_binade_loop, moved_on_a_grid])
def test_moved_fraction_accepts_the_reference_and_other_methods(answer, capsys) -> None:
    accepts(MOVED, answer, capsys)


def sampled(bound, lr, dtype):
    w = ((torch.rand(2**20) * 2 - 1) * bound).to(dtype)
    return float(((w + torch.tensor(lr, dtype=dtype)) != w).double().mean())


def sampled_with_numpy(bound, lr, dtype):
    w = torch.from_numpy(np.random.uniform(-bound, bound, 2**16)).to(dtype)
    return float(((w + torch.tensor(lr, dtype=dtype)) != w).double().mean())


def unclipped_fraction(bound, lr, dtype):
    """The reference without its min(1, ...): wrong where every weight moves."""
    u = torch.tensor(lr, dtype=dtype).item()
    m = -int(math.log2(torch.finfo(dtype).eps))
    return 2.0 ** math.ceil(math.log2(2.0 ** (m + 1) * u)) / bound if u else 0.0


@pytest.mark.parametrize(
    "wrong, match",
    [
        # the gap taken as eps * |w|, growing smoothly instead of by binades
        (lambda b, lr, d: min(1.0, 2 * lr / (torch.finfo(d).eps * b)), "grew smoothly"),
        # a whole gap instead of half of it
        (lambda b, lr, d: moved_fraction(b, lr, d) / 2, "half the right fraction"),
        # mantissa bits counted with the hidden bit: every gap taken half as large
        (lambda b, lr, d: min(1.0, 2 * moved_fraction(b, lr, d)), "twice the right fraction"),
        # the update used in fp32: in fp16, 2e-8 is stored as zero
        (
            lambda b, lr, d: min(
                1.0, 2.0 ** math.ceil(math.log2(2.0 ** (-math.log2(torch.finfo(d).eps) + 1) * lr)) / b
            ),
            "never reaches the weights",
        ),
        (lambda b, lr, d: 1 - moved_fraction(b, lr, d), "leaves unchanged"),
        (lambda b, lr, d: 100 * moved_fraction(b, lr, d), "percentage"),
        (sampled, "drew random numbers .*torch"),
        (sampled_with_numpy, "drew random numbers .*NumPy"),
        (lambda b, lr, d: {"fraction": moved_fraction(b, lr, d)}, "expected one number"),
        (lambda b, lr, d: 0.25, "you predict 0.25"),
        (unclipped_fraction, "more than 1"),
    ],
)
def test_moved_fraction_rejects_mistakes(wrong, match) -> None:
    rejects(MOVED, wrong, match)


def test_moved_fraction_restores_the_random_state_a_sampling_answer_used() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    rejects(MOVED, sampled, "drew random numbers")
    assert torch.equal(torch.random.get_rng_state(), state)


def wrong_where_few_move(bound, lr, dtype):
    """Right everywhere but at the decayed lr, where it gives a figure a sampler could have measured."""
    return 1.355e-4 if lr == 3e-7 else moved_fraction(bound, lr, dtype)


def test_moved_fraction_quotes_no_noisy_simulation() -> None:
    """Where so few of 2^20 simulated weights move that the count is noisier than the check's tolerance,
    the message says the sample is too small instead of quoting the measurement as the answer."""
    _, bound, lr, dtype = next(c for c in checks.MOVED_CASES if c[2] == 3e-7)
    exact = checks._moved_fraction(bound, lr, dtype)
    noisy = checks._simulated_moved_fraction(bound, lr, dtype)
    assert not math.isclose(noisy, exact, rel_tol=checks.MOVED_RTOL)  # the case this is about
    message = rejects(
        MOVED, wrong_where_few_move, r"lr = 3e-7, pure bf16, you predict 0\.0001355 \(a simulation"
    )
    assert "too small a sample" in message and "1% tolerance" in message
    assert "measures" not in message and f"{noisy:.4g}" not in message and f"{exact:.4g}" not in message
    # where the simulation is precise, its measurement is still quoted
    assert "such weights measures 0.2502" in rejects(MOVED, lambda b, lr, d: 0.3, "you predict 0.3;")


def test_moved_fraction_reference_agrees_with_a_simulation() -> None:
    for _, bound, lr, dtype in checks.MOVED_CASES:
        exact = checks._moved_fraction(bound, lr, dtype)
        measured = checks._simulated_moved_fraction(bound, lr, dtype)
        # binomial noise of 2^20 draws, four standard deviations
        assert abs(exact - measured) <= 4 * math.sqrt(max(exact * (1 - exact), 1e-6) / 2**20) + 1e-9


# --- promote-interval ---------------------------------------------------------------------------------


def promote_interval(products, acc_dtype, budget):
    rows, n = products.shape
    exact = products.double().sum(dim=1)
    best, chunk = 0, 1
    while chunk <= n:
        terms = products.reshape(rows, n // chunk, chunk)
        acc = torch.zeros(rows, n // chunk, dtype=acc_dtype)
        for i in range(chunk):
            acc = (acc.float() + terms[..., i]).to(acc_dtype)
        total = acc.float().sum(dim=1)
        worst = ((total.double() - exact).abs() / exact).max().item()
        if worst <= budget:
            best = chunk
        chunk *= 2
    return best


def _emulate(products, acc_dtype, chunk, *, round_products=False, exact_rounding=False, outer=torch.float32):
    rows, n = products.shape
    terms = products.double().reshape(rows, n // chunk, chunk)
    acc = torch.zeros(rows, n // chunk, dtype=torch.float64)
    fmt = formats.get(acc_dtype)
    for i in range(chunk):
        if round_products:  # the chapter's accumulate: each product rounded to the format, then the sum
            acc = (acc.to(acc_dtype) + terms[..., i].to(acc_dtype)).double()
        elif exact_rounding:  # one correct rounding of the exact sum
            acc = formats.round_tensor(acc + terms[..., i], fmt).double()
        else:
            acc = (acc + terms[..., i]).to(acc_dtype).double()
    if outer == torch.float32:
        return acc.float().sum(dim=1).double()
    total = torch.zeros(rows, dtype=torch.float64)
    for j in range(n // chunk):
        total = (total + acc[:, j]).to(outer).double()
    return total


def promote_by(error=lambda got, exact: ((got - exact).abs() / exact).max(), descending=False, **how):
    """An answer built from one emulation and one error measure, searching up or down."""

    def answer(products, acc_dtype, budget):
        exact = products.double().sum(dim=1)
        n = products.shape[1]
        chunks = [2**k for k in range(int(math.log2(n)) + 1)]
        if descending:  # another search: the first chunk from the top that meets the budget
            for c in reversed(chunks):
                if float(error(_emulate(products, acc_dtype, c, **how), exact)) <= budget:
                    return c
            return 0
        fits = [c for c in chunks if float(error(_emulate(products, acc_dtype, c, **how), exact)) <= budget]
        return max(fits, default=0)

    return answer


@pytest.mark.parametrize(
    "answer",
    [
        promote_interval,
        promote_by(round_products=True),  # products rounded to the format before each addition
        promote_by(exact_rounding=True, descending=True),  # correctly rounded sums, searched from the top
    ],
)
def test_promote_interval_accepts_the_reference_and_other_emulations(answer, capsys) -> None:
    accepts(PROMOTE, answer, capsys)


def summed_by_torch(products, acc_dtype, budget):
    """The shortcut: PyTorch's sum of a bf16 tensor adds in fp32 and rounds only its result."""
    rows, n = products.shape
    exact = products.double().sum(dim=1)
    fits = []
    for k in range(int(math.log2(n)) + 1):
        c = 2**k
        partial = products.reshape(rows, n // c, c).to(acc_dtype).sum(-1)
        if ((partial.float().sum(1).double() - exact).abs() / exact).max() <= budget:
            fits.append(c)
    return max(fits, default=0)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (summed_by_torch, "rounded once, as torch.sum"),
        (promote_by(outer=torch.bfloat16), "added in the low-precision format too"),
        (lambda p, d, b: p.shape[1] // promote_interval(p, d, b), "number of chunks"),
        (
            lambda p, d, b: min(2 * promote_interval(p, d, b), p.shape[1] * 2),
            "over the budget|not a power of two",
        ),
        (promote_by(error=lambda got, exact: ((got - exact).abs() / exact).mean()), "over the budget"),
        (promote_by(error=lambda got, exact: (got - exact).abs().max()), "no chunk within the budget"),
        (lambda p, d, b: promote_interval(p, d, b) // 2, "not the largest chunk"),
        (lambda p, d, b: 100, "not a power of two"),
        (lambda p, d, b: "128", "expected one number"),
    ],
)
def test_promote_interval_rejects_mistakes(wrong, match) -> None:
    rejects(PROMOTE, wrong, match)


def test_promote_cases_are_unambiguous_for_every_faithful_emulation() -> None:
    """The budget lies well away from the errors at the answer and at twice it, however one emulates."""
    for case, products, acc_dtype, budget in checks.promote_cases():
        exact = products.double().sum(dim=1)
        n = products.shape[1]
        for how in ({}, {"round_products": True}):
            errors = {
                2**k: float(((_emulate(products, acc_dtype, 2**k, **how) - exact).abs() / exact).max())
                for k in range(int(math.log2(n)) + 1)
            }
            answer = checks._largest_within(errors, budget)
            assert answer == checks._largest_within(
                checks._case_errors(
                    checks.promote_cases().index(next(c for c in checks.promote_cases() if c[0] == case))
                ),
                budget,
            )
            assert all(e <= budget / 1.4 for c, e in errors.items() if c <= answer), (case, how)
            if 2 * answer <= n:
                assert errors[2 * answer] >= 1.4 * budget, (case, how)


# --- largest-model ----------------------------------------------------------------------------------


def largest_model(budget_gb, optimizer, activation_elements):
    budget = budget_gb * 1e9
    states = memory.OPTIMIZER_STATES[optimizer]
    largest = {}
    for recipe, param_bytes, act_bytes, copy_bytes in (
        ("fp32", 4, 4, 0),
        ("amp", 4, 2, 2),
        ("pure_bf16", 2, 2, 0),
    ):
        held = param_bytes * (1 + states)
        temporaries = param_bytes if optimizer.startswith("adam") else 0
        at_step = budget // (held + param_bytes + temporaries)
        at_forward = (budget - act_bytes * activation_elements) // (held + copy_bytes)
        largest[recipe] = max(0, int(min(at_step, at_forward)))
    return largest


def largest_by_bisection(budget_gb, optimizer, activation_elements):
    """Another method: bisect on a peak written out per recipe, in exact integers."""
    budget = round(budget_gb * 10**9)
    k = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}[optimizer]

    def peak(recipe, n):
        p = 2 if recipe == "pure_bf16" else 4
        held = (1 + k) * p * n
        step = p * n + (p * n if optimizer in ("adam", "adamw") else 0)
        forward = (4 if recipe == "fp32" else 2) * activation_elements + (2 * n if recipe == "amp" else 0)
        return held + max(step, forward)

    out = {}
    for recipe in ("pure_bf16", "amp", "fp32"):
        lo, hi = -1, budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if peak(recipe, mid) <= budget else (lo, mid - 1)
        out[recipe] = max(lo, 0)
    return out


@pytest.mark.parametrize("answer", [largest_model, largest_by_bisection])
def test_largest_model_accepts_the_reference_and_a_bisection(answer, capsys) -> None:
    accepts(LARGEST, answer, capsys)


def unclipped_count(budget_gb, optimizer, activation_elements):
    """The reference without its max(0, ...): negative where the activations alone exceed the budget."""
    budget = budget_gb * 1e9
    states = memory.OPTIMIZER_STATES[optimizer]
    largest = {}
    for recipe, param_bytes, act_bytes, copy_bytes in (
        ("fp32", 4, 4, 0),
        ("amp", 4, 2, 2),
        ("pure_bf16", 2, 2, 0),
    ):
        held = param_bytes * (1 + states)
        temporaries = param_bytes if optimizer.startswith("adam") else 0
        at_step = budget // (held + param_bytes + temporaries)
        at_forward = (budget - act_bytes * activation_elements) // (held + copy_bytes)
        largest[recipe] = int(min(at_step, at_forward))
    return largest


def largest_with(**mistake):
    def answer(budget_gb, optimizer, activation_elements):
        return {
            r: checks._largest_closed_form(budget_gb * 1e9, r, optimizer, activation_elements, **mistake)
            for r in checks.RECIPES
        }

    return answer


def using_the_calculator(budget_gb, optimizer, activation_elements):
    est = memory.estimate("fp32", 1, activation_elements=activation_elements, optimizer=optimizer)
    return {r: int(budget_gb * 1e9 // est["total"]) for r in checks.RECIPES}


@pytest.mark.parametrize(
    "wrong, match",
    [
        (largest_with(everything_at_once=True), "as if both were held at once"),
        (largest_with(no_temporaries=True), "AdamW's temporaries"),
        (largest_with(no_copies=True), "16-bit copies"),
        (largest_with(fp32_activations=True), "activations at 4 bytes"),
        (largest_with(amp_like_pure=True), "giving AMP 16-bit weights"),
        (largest_with(only_optimizer_step=True), "only at the optimizer step"),
        (largest_with(only_forward=True), "only at the end of the forward pass"),
        (lambda gb, o, a: largest_model(gb * 2**30 / 1e9, o, a), "GiB"),
        (lambda gb, o, a: {r: n + 1 for r, n in largest_model(gb, o, a).items()}, "[Rr]ound down"),
        (lambda gb, o, a: {r: n - 1000 for r, n in largest_model(gb, o, a).items()}, "more would still fit"),
        (lambda gb, o, a: {r: n / 3 for r, n in largest_model(gb, o, a).items()}, "not a whole number"),
        (unclipped_count, "negative count"),
        (using_the_calculator, r"called mpcourse\.memory\.estimate"),
        (lambda gb, o, a: list(largest_model(gb, o, a).values()), "expected a dict"),
        (lambda gb, o, a: {"fp32": 1, "bf16": 2, "pure_bf16": 3}, "with keys"),
    ],
)
def test_largest_model_rejects_mistakes(wrong, match) -> None:
    rejects(LARGEST, wrong, match)


def test_largest_model_switches_the_calculator_back_on() -> None:
    rejects(LARGEST, using_the_calculator, "called mpcourse")
    assert memory.estimate("fp32", 10)["total"] == 160


def test_messages_separate_the_case_from_the_verdict() -> None:
    """The slips the review found: the case ran straight into the verdict, with no comma."""
    message = rejects(PROMOTE, lambda p, d, b: promote_interval(p, d, b) // 2, "not the largest chunk")
    assert re.search(r"a bf16 accumulator, a 5% budget, chunks of \d+ meet the budget", message)
    message = rejects(
        LARGEST, lambda gb, o, a: {r: n + 1 for r, n in largest_model(gb, o, a).items()}, "peak"
    )
    assert "activations negligible, recipe 'fp32', a step of 4,000,000,001 parameters" in message
    message = rejects(LARGEST, using_the_calculator, "called mpcourse")
    assert "activations negligible, your function called mpcourse.memory.estimate" in message
    message = rejects(STEP, step_with(backward_inside=True), "inside the autocast block")
    assert "an A100 (fp16 and bf16 native), step 1, backward ran" in message
    message = rejects(STEP, step_with(own_scaler=True), "never scaled the loss")
    assert "a T4 (fp16 native, bf16 emulated), step 1, where the step runs in fp16, the scaler" in message


def test_largest_model_reference_agrees_with_the_closed_form() -> None:
    for _, budget_gb, optimizer, activations in checks.LARGEST_CASES:
        for recipe in checks.RECIPES:
            budget = int(budget_gb * 1e9)
            assert checks._largest_by_calculator(budget, recipe, optimizer, activations) == (
                checks._largest_closed_form(budget, recipe, optimizer, activations)
            )


# --- train-step -----------------------------------------------------------------------------------------


def _choose(support):
    if support["bf16"].status == "native":
        return torch.bfloat16
    if support["fp16"].status == "native":
        return torch.float16
    return None


def amp_train_step(model, optimizer, scaler, x, y, device_type, support):
    dtype = _choose(support)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    if dtype == torch.float16:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


def scaler_everywhere(model, optimizer, scaler, x, y, device_type, support):
    """Valid too: the scaler for every format, unscaling first (as for clipping); loss.item() returned."""
    dtype = {"native": torch.bfloat16}.get(support["bf16"].status) or (
        torch.float16 if support["fp16"].status == "native" else torch.float32
    )
    model.zero_grad()
    with torch.amp.autocast(device_type=device_type, dtype=dtype):  # fp32 on a CPU: autocast switches off
        loss = torch.nn.CrossEntropyLoss()(model(x).float(), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def fp32_loss_outside_autocast(model, optimizer, scaler, x, y, device_type, support):
    """Valid too: the loss computed after the autocast block, from the logits cast to fp32."""
    dtype = _choose(support)
    for p in model.parameters():
        p.grad = None
    with torch.autocast(device_type, dtype=dtype or torch.float16, enabled=dtype is not None):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    if dtype == torch.float16:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


@pytest.mark.parametrize("answer", [amp_train_step, scaler_everywhere, fp32_loss_outside_autocast])
def test_train_step_accepts_the_reference_and_other_valid_steps(answer, capsys) -> None:
    accepts(STEP, answer, capsys)


def step_with(
    *,
    choose=_choose,
    no_dtype=False,
    zero_grad=True,
    backward_inside=False,
    scaled_backward=True,
    through_scaler=True,
    update=True,
    low_precision_loss=False,
    return_scaled=False,
    convert_model=False,
    own_scaler=False,
    zero_grad_late=False,
    step_twice=False,
    rescale_returned=False,
):
    """The reference step with one part changed: the realistic mistakes the check must catch."""

    def step(model, optimizer, scaler, x, y, device_type, support):
        dtype = choose(support)
        if own_scaler:
            scaler = torch.amp.GradScaler(device_type)
        if convert_model and dtype is not None:
            model.to(dtype)
            x = x.to(dtype)
        if zero_grad:
            optimizer.zero_grad()
        context = (
            torch.autocast(device_type)
            if no_dtype
            else torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
        )
        with context:
            logits = model(x)
            loss = None if low_precision_loss else F.cross_entropy(logits, y)
            if backward_inside:
                (scaler.scale(loss) if dtype == torch.float16 else loss).backward()
        if low_precision_loss:
            loss = F.cross_entropy(logits, y)  # outside autocast, on 16-bit logits: a 16-bit loss
        use_scaler = dtype == torch.float16 or no_dtype
        scaled = scaler.scale(loss) if use_scaler else loss
        if not backward_inside:
            (scaled if scaled_backward else loss).backward()
        if zero_grad_late:
            optimizer.zero_grad()
        if use_scaler and through_scaler:
            scaler.step(optimizer)
            if step_twice:
                optimizer.step()
        else:
            optimizer.step()
        if use_scaler and update:
            scaler.update()
        if rescale_returned and use_scaler:
            return scaler.scale(loss)  # the scaled loss, scaled once more after the update
        return scaled if return_scaled else loss

    return step


def engine_step(model, optimizer, scaler, x, y, device_type, support):
    from mpcourse.train import train_step

    dtype = _choose(support)
    return train_step(
        model,
        x,
        y,
        F.cross_entropy,
        optimizer,
        autocast_dtype=dtype,
        scaler=scaler if dtype == torch.float16 else None,
    ).loss


@pytest.mark.parametrize(
    "wrong, match",
    [
        (step_with(no_dtype=True), "bfloat16, which this hardware only emulates"),  # torch.autocast(device)
        (step_with(choose=lambda s: torch.float16), "ran in torch.float16, expected torch.bfloat16"),
        (step_with(choose=lambda s: torch.bfloat16), "only emulates"),
        (
            step_with(choose=lambda s: torch.bfloat16 if s["bf16"].status == "native" else torch.float16),
            r"expected fp32 \(no autocast\)",
        ),
        (step_with(backward_inside=True), "backward ran inside the autocast block"),
        (step_with(zero_grad=False), "gradients accumulated across steps"),
        (step_with(through_scaler=False), "no inf checks were recorded"),
        (step_with(through_scaler=False, update=False), r"order \['scale'\]"),
        (step_with(update=False), r"order \['scale', 'step'\]"),
        (step_with(scaled_backward=False), "yours did not overflow"),
        (step_with(low_precision_loss=True), "cross-entropy ran in low precision"),
        (step_with(return_scaled=True), "scaled loss"),
        (step_with(rescale_returned=True), "you returned the scaled loss"),
        (step_with(convert_model=True), "you converted the model"),
        (step_with(own_scaler=True), "scaler you were given never scaled the loss"),
        (step_with(zero_grad_late=True), "moved .* times as far"),
        (step_with(step_twice=True), "inf or NaN|twice as far"),
        (engine_step, "course engine's train_step"),
    ],
)
def test_train_step_rejects_mistakes(wrong, match) -> None:
    rejects(STEP, wrong, match)


def test_train_step_names_a_scaled_return_value_not_the_call_order() -> None:
    """Returning scaler.scale(loss), called after the update, is a scaled loss, not a misordered step."""
    message = rejects(STEP, step_with(rescale_returned=True), "you returned the scaled loss")
    assert "order" not in message and "after its update" in message


def test_train_step_says_why_backward_belongs_after_autocast() -> None:
    message = rejects(STEP, step_with(backward_inside=True), "backward ran inside the autocast block")
    assert "PyTorch's AMP documentation recommends" in message
    assert "already chose each backward op's dtype" in message


def test_train_step_prompt_asks_for_backward_after_autocast() -> None:
    """The check rejects backward inside autocast, so the exercise's prompt must ask for it."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    prompt = next(c.source for c in nb.cells if c.cell_type == "markdown" and f":label: {STEP}" in c.source)
    prompt = " ".join(prompt.split())
    assert "close the block before backward" in prompt and "pytorch-amp-docs" in prompt


def test_train_step_overflows_and_skips_in_fp16() -> None:
    """The fp16 case is a real test of the scaler: some steps overflow and must be skipped."""
    model = checks._step_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=checks.STEP_INIT_SCALE, growth_interval=checks.STEP_GROWTH_INTERVAL
    )
    scales = []
    for x, y in checks._step_batches():
        train_step(model, x, y, F.cross_entropy, opt, autocast_dtype=torch.float16, scaler=scaler)
        scales.append(scaler.get_scale())
    assert any(b < a for a, b in zip([checks.STEP_INIT_SCALE, *scales], scales))  # skipped at least once
    assert any(b > a for a, b in itertools.pairwise(scales))  # and grew again after clean steps


# --- reproducibility ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label, wrong",
    [
        (MOVED, lambda b, lr, d: 0.3),
        (PROMOTE, lambda p, d, b: 64),
        (LARGEST, largest_with(no_copies=True)),
        (STEP, step_with(zero_grad=False)),
    ],
)
def test_the_same_wrong_answer_gets_the_same_message(label, wrong) -> None:
    assert rejects(label, wrong, ".") == rejects(label, wrong, ".")
