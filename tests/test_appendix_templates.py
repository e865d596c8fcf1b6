"""The training templates of book/code_templates.md: each trains, and a resumed run continues bit for bit.

Every template runs a few optimizer steps on the CPU (fp16 autocast and GradScaler("cpu") work there),
with gradient accumulation. Then the same run is interrupted (``stop_after``) and resumed from its
checkpoint: the losses of the two parts must be those of the uninterrupted run, and the final
checkpoints (model, optimizer, schedule, scaler, random-number generators) equal bit for bit.
Negative controls show the check can fail: a checkpoint missing the RNG or the scaler state resumes
differently.
"""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from mpcourse.templates import SHARED_FUNCTIONS, TEMPLATES

STEPS, STOP = 10, 4
SETTINGS = dict(steps=STEPS, accumulation=2, warmup=2, lr=1e-2, log_every=0, save_every=1000)
CASES = {
    "fp16": ("train_fp16", {}),
    "bf16": ("train_bf16", {}),
    "pure_bf16_sr": ("train_pure_bf16", {"update": "stochastic"}),
    "pure_bf16_kahan": ("train_pure_bf16", {"update": "kahan"}),
    "fp8_emulated": ("train_fp8", {"backend": "emulated"}),
    "fp8_emulated_rowwise": ("train_fp8", {"backend": "emulated", "recipe": "rowwise"}),
}


def template(module: str) -> Any:
    return importlib.import_module(f"mpcourse.templates.{module}")


def equal(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested checkpoint contents (tensors compared with torch.equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal, a, b))
    return a == b


def run_twice(t: Any, tmp_path: Path, extra: dict, drop: str | None = None) -> tuple[list, list, dict, dict]:
    """The uninterrupted run and the interrupted-and-resumed one: their losses and final checkpoints."""
    whole_ckpt, parts_ckpt = tmp_path / "whole.pt", tmp_path / "parts.pt"
    whole = t.train(t.Config(checkpoint=str(whole_ckpt), **SETTINGS, **extra))
    first = t.train(t.Config(checkpoint=str(parts_ckpt), stop_after=STOP, **SETTINGS, **extra))
    if drop:  # the negative control: a checkpoint whose RNG or scaler part is replaced by a fresh one
        state = torch.load(parts_ckpt, weights_only=True)
        if drop == "rng":
            torch.manual_seed(12345)
            state["rng"] = t.rng_state()
        else:
            state["scaler"] = torch.amp.GradScaler("cpu").state_dict()
        torch.save(state, parts_ckpt)
    second = t.train(t.Config(checkpoint=str(parts_ckpt), **SETTINGS, **extra))
    load = functools.partial(torch.load, weights_only=True)
    return whole, first + second, load(whole_ckpt), load(parts_ckpt)


@pytest.mark.parametrize("case", CASES)
def test_the_template_trains_and_resumes_bit_for_bit(case: str, tmp_path: Path) -> None:
    module, extra = CASES[case]
    t = template(module)
    whole, resumed, whole_state, resumed_state = run_twice(t, tmp_path, extra)
    assert len(whole) == STEPS and all(torch.isfinite(torch.tensor(whole)))
    assert sum(whole[-3:]) / 3 < sum(whole[:3]) / 3 - 0.1, f"the loss did not fall: {whole}"
    assert resumed == whole, "the resumed run's losses differ from the uninterrupted run's"
    assert resumed_state["step"] == whole_state["step"] == STEPS
    for part in whole_state.keys() - {"config"}:  # the config differs in the checkpoint's path only
        assert equal(whole_state[part], resumed_state[part]), (
            f"checkpoint part {part!r} differs after resuming"
        )


def test_the_fp16_template_resumes_through_skipped_steps(tmp_path: Path, monkeypatch) -> None:
    """With a scaler that grows its scale every 2 clean steps, the scale overflows fp16 and steps are
    skipped: the scaler's state (scale and growth counter) then decides the run, and it resumes exactly."""
    t = template("train_fp16")
    skipped = []

    class EagerScaler(torch.amp.GradScaler):
        def __init__(self, device: str) -> None:
            super().__init__(device, init_scale=2.0**22, growth_interval=2)

        def update(self, new_scale: Any = None) -> None:
            before = self.get_scale()
            super().update(new_scale)
            skipped.append(self.get_scale() < before)

    monkeypatch.setattr(t.torch.amp, "GradScaler", EagerScaler)
    whole, resumed, whole_state, resumed_state = run_twice(t, tmp_path, {})
    assert any(skipped), "no step overflowed: the test does not exercise skipped steps"
    assert resumed == whole and equal(whole_state["model"], resumed_state["model"])
    assert equal(whole_state["scaler"], resumed_state["scaler"])
    # The negative control: resuming with a fresh scaler state changes the run.
    (tmp_path / "fresh").mkdir()
    _, resumed_fresh, _, fresh_state = run_twice(t, tmp_path / "fresh", {}, drop="scaler")
    assert resumed_fresh != whole or not equal(whole_state["model"], fresh_state["model"])


def test_a_checkpoint_without_the_random_state_resumes_differently(tmp_path: Path) -> None:
    """Dropout draws random numbers every step: the checkpoint must carry the generators' state."""
    t = template("train_bf16")
    whole, resumed, *_ = run_twice(t, tmp_path, {}, drop="rng")
    assert resumed[:STOP] == whole[:STOP] and resumed[STOP:] != whole[STOP:]


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    t = template("train_bf16")
    ckpt = str(tmp_path / "c.pt")
    t.train(t.Config(checkpoint=ckpt, **{**SETTINGS, "steps": 2}))
    with pytest.raises(ValueError, match="other settings.*lr"):
        t.train(t.Config(checkpoint=ckpt, **{**SETTINGS, "steps": 2, "lr": 0.5}))


def test_the_templates_share_their_common_parts_word_for_word() -> None:
    """Data, model, batches, schedule, RNG and checkpoint code are the same text in every template, so a
    fix made in one cannot be forgotten in the others (the page shows them once)."""
    sources = {}
    for name, module in TEMPLATES.items():
        path = Path(template(module).__file__)
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        sources[name] = {
            node.name: ast.get_source_segment(text, node)
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name in SHARED_FUNCTIONS
        }
        assert set(sources[name]) == set(SHARED_FUNCTIONS), (name, set(SHARED_FUNCTIONS) - set(sources[name]))
    reference = sources["fp16"]
    for name, functions in sources.items():
        for function, source in functions.items():
            assert source == reference[function], (
                f"{function} differs between train_fp16 and {TEMPLATES[name]}"
            )


def test_the_command_line_sets_every_field() -> None:
    t = template("train_fp8")
    cfg = t.parse_args(["--steps", "7", "--stop-after", "3", "--backend", "emulated", "--lr", "0.1"])
    assert (cfg.steps, cfg.stop_after, cfg.backend, cfg.lr) == (7, 3, "emulated", 0.1)
    assert t.parse_args([]) == t.Config()


def test_the_pure_bf16_template_refuses_round_to_nearest() -> None:
    t = template("train_pure_bf16")
    with pytest.raises(ValueError, match="stochastic"):
        t.train(t.Config(update="nearest", **{**SETTINGS, "steps": 1}))


def test_the_fp8_template_falls_back_to_emulation_on_a_cpu(capsys) -> None:
    t = template("train_fp8")
    model = t.make_model()
    assert t.convert_linear_layers(model, t.Config(backend="auto")) == "emulated"
    assert "emulated" in capsys.readouterr().out
    kinds = [type(m).__name__ for m in model if isinstance(m, torch.nn.Linear)]
    assert kinds == ["Linear", "FP8Linear", "Linear"], kinds  # first and last layers stay in bf16
