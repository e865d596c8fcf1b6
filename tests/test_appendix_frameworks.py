"""The snippets of book/framework_apis.md: each one runs here, or is checked against a stored source.

- PyTorch's own (torch.amp, FSDP2) run in every test run.
- torchao, Keras 3 (torch backend), JAX with Flax, Lightning and Accelerate run where their packages
  are installed: ``make test-frameworks`` installs the ``frameworks`` extra and runs this file (the
  plain ``make test`` skips them, to stay within its time budget).
- DeepSpeed, Megatron-Core and Transformer Engine need CUDA to install or run: their snippets are
  checked against verbatim excerpts of their source stored in book/snippets/framework_apis/sources/
  (with the commit they come from). Every key, class, argument and flag a snippet uses must be in
  the excerpt, and the values the page calls defaults must be the defaults there.
"""

from __future__ import annotations

import ast
import json
import re
import runpy
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT

SNIPPETS = ROOT / "book" / "snippets" / "framework_apis"
SOURCES = SNIPPETS / "sources"
PAGE = ROOT / "book" / "framework_apis.md"


def run(name: str) -> dict[str, Any]:
    """Execute a snippet as a script; return its global variables."""
    return runpy.run_path(str(SNIPPETS / name), run_name="__snippet__")


def excerpt(name: str) -> str:
    return (SOURCES / name).read_text(encoding="utf-8")


def sections(text: str) -> dict[str, str]:
    """The excerpt's parts by source path (several parts of one file are joined)."""
    parts: dict[str, str] = {}
    for block in re.split(r"^# ===== ", text, flags=re.MULTILINE)[1:]:
        header, _, body = block.partition("\n")
        path = header.split(",")[0]
        parts[path] = parts.get(path, "") + body
    return parts


def fields(text: str) -> dict[str, str]:
    """Dataclass-style fields of an excerpt: name -> the annotation and default after the colon."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^ {4}(\w+): (.+)$", text, flags=re.MULTILINE)}


# ---- every snippet is on the page, and every page listing is a snippet --------------------------------


def test_every_snippet_is_shown_on_the_page_and_every_excerpt_is_named() -> None:
    page = PAGE.read_text(encoding="utf-8")
    included = set(re.findall(r"```\{literalinclude\} snippets/framework_apis/(\S+)", page))
    files = {p.name for p in SNIPPETS.iterdir() if p.is_file()}
    assert included == files, (sorted(files - included), sorted(included - files))
    for source in SOURCES.glob("*.txt"):
        assert f"sources/{source.name}" in page, f"the page does not link {source.name}"
        head = source.read_text(encoding="utf-8").splitlines()[:3]
        assert head[1].startswith("# Source: https://github.com/") and "at commit" in head[1], head
        assert re.search(r"Retrieved: \d{4}-\d\d-\d\d", head[2]), head


# ---- PyTorch: runs everywhere ---------------------------------------------------------------------------


def test_torch_amp_snippet() -> None:
    ns = run("pytorch_amp.py")
    assert ns["logits"].dtype == torch.float16 and ns["loss"].dtype == torch.float32
    assert ns["model"].weight.dtype == torch.float32
    assert isinstance(ns["scaler"], torch.amp.GradScaler)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_snippet_runs_as_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ns = run("pytorch_fsdp2.py")
    weight = ns["model"][0].weight
    assert type(weight).__name__ == "DTensor" and weight.dtype == torch.float32  # sharded fp32 master weights
    assert ns["logits"].dtype == torch.bfloat16  # computed with the bf16 parameters of the policy
    assert not torch.distributed.is_initialized()


# ---- libraries installed by the frameworks extra (make test-frameworks) -----------------------------------


def test_torchao_float8_snippet() -> None:
    pytest.importorskip("torchao.float8", reason="torchao: make test-frameworks")
    ns = run("torchao_float8.py")
    kinds = [type(m).__name__ for m in ns["model"] if isinstance(m, torch.nn.Linear)]
    assert kinds == ["Linear", "Float8Linear", "Linear"], kinds
    assert torch.isfinite(ns["loss"]) and ns["model"][2].weight.dtype == torch.float32
    from torchao.float8.config import Float8LinearRecipeName

    assert {r.value for r in Float8LinearRecipeName} >= {"tensorwise", "rowwise", "rowwise_with_gw_hp"}


def test_keras_snippet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # before the import: Keras reads it once
    keras = pytest.importorskip("keras", reason="keras: make test-frameworks")
    ns = run("keras_mixed.py")
    assert keras.config.backend() == "torch"
    model = ns["model"]
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # compile() wrapped it
    assert hasattr(model.optimizer, "scale_loss")
    hidden, logits = model.layers
    assert (hidden.compute_dtype, hidden.variable_dtype, logits.compute_dtype) == (
        "float16",
        "float32",
        "float32",
    )
    assert all(v == v for v in ns["history"].history["loss"])  # finite (NaN != NaN)
    fp8 = ns["fp8_model"]
    assert fp8.layers[0].dtype_policy.name.startswith("float8")
    names = {v.name for v in fp8.layers[0].variables}
    assert {
        "inputs_amax_history",
        "kernel_amax_history",
        "outputs_grad_amax_history",
    } <= names  # delayed scaling
    fp8.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert fp8.fit(ns["x"], ns["y"], epochs=1, verbose=0).history["loss"][0] > 0  # and it trains
    assert keras.config.dtype_policy().name == "float32"


def test_flax_snippet() -> None:
    pytest.importorskip("flax.nnx", reason="flax: make test-frameworks")
    import jax.numpy as jnp

    ns = run("flax_nnx.py")
    model = ns["model"]
    assert model.hidden.kernel[...].dtype == jnp.float32
    assert model(ns["x"]).dtype == jnp.bfloat16
    losses = [float(v) for v in ns["losses"]]
    assert losses[-1] < losses[0], losses
    import inspect

    import flax.linen

    # fp8 in Flax (linen): nn.Dense(..., dot_general_cls=nn.Fp8DotGeneralOp), scaled from an amax history
    assert "dot_general_cls" in inspect.signature(flax.linen.Dense).parameters
    assert "amax_history_length" in inspect.signature(flax.linen.Fp8DotGeneralOp).parameters


def test_lightning_snippet() -> None:
    lightning = pytest.importorskip("lightning", reason="lightning: make test-frameworks")
    ns = run("lightning_bf16.py")
    trainer = ns["trainer"]
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 4
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR

    assert {"16-mixed", "bf16-mixed", "transformer-engine"} <= set(_PRECISION_INPUT_STR.__args__)
    # What the page says about CPUs: fp16 AMP is refused there and bf16 used instead, with a warning.
    with pytest.warns(UserWarning, match="not supported on CPU"):
        cpu = lightning.Trainer(
            precision="16-mixed", accelerator="cpu", logger=False, enable_checkpointing=False
        )
    assert cpu.precision == "bf16-mixed"
    # ... and that FSDPStrategy derives its MixedPrecision from the flag: bf16 reductions under "bf16-mixed".
    from lightning.pytorch.plugins.precision import FSDPPrecision

    policy = FSDPPrecision("bf16-mixed").mixed_precision_config
    assert policy.param_dtype == policy.reduce_dtype == torch.bfloat16


def test_accelerate_snippet() -> None:
    pytest.importorskip("accelerate", reason="accelerate: make test-frameworks")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import AORecipeKwargs, TERecipeKwargs  # the fp8 recipes the page names

    assert AORecipeKwargs and TERecipeKwargs

    def dtype_inside(accelerator: Accelerator, model: torch.nn.Module) -> torch.dtype:
        seen = []
        inner = accelerator.unwrap_model(model)[0]
        handle = inner.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        model(torch.randn(4, 64, device=accelerator.device))
        handle.remove()
        return seen[0]

    try:
        ns = run("accelerate_bf16.py")
        accelerator = ns["accelerator"]
        assert accelerator.mixed_precision == "bf16" and accelerator.native_amp
        assert dtype_inside(accelerator, ns["model"]) == torch.bfloat16
        assert ns["model"](torch.randn(4, 64)).dtype == torch.float32  # prepare() converts outputs to fp32
        assert accelerator.unwrap_model(ns["model"])[0].weight.dtype == torch.float32
        AcceleratorState._reset_state(True)
        # What the page says about CPUs: mixed_precision="fp16" is accepted there but autocast is off.
        fp16 = Accelerator(mixed_precision="fp16", cpu=True)
        model = fp16.prepare(torch.nn.Sequential(torch.nn.Linear(64, 8)))
        assert fp16.mixed_precision == "fp16" and not fp16.native_amp and fp16.scaler is None
        assert dtype_inside(fp16, model) == torch.float32
    finally:
        AcceleratorState._reset_state(True)


# ---- checked against stored sources: DeepSpeed, Megatron-Core, Transformer Engine -------------------------


def _class_block(text: str, name: str) -> str:
    """The lines of class ``name`` in an excerpt: from its header to the next unindented line."""
    match = re.search(rf"^class {name}\b.*?(?=^\S|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"class {name} is not in the excerpt"
    return match.group(0)


@pytest.mark.parametrize("config", ["deepspeed_bf16.json", "deepspeed_fp16.json"])
def test_deepspeed_config_keys_and_defaults_are_deepspeeds(config: str) -> None:
    text = excerpt("deepspeed.txt")
    settings = json.loads((SNIPPETS / config).read_text())
    classes = {"bf16": "DeepSpeedBF16Config", "fp16": "DeepSpeedFP16Config"}
    for key, value in settings.items():
        assert re.search(rf"""= ["']{key}["']""", text), (
            f"{key!r} is not a DeepSpeed config key in the excerpt"
        )
        if key in classes:
            block = fields(_class_block(text, classes[key]))
            for sub, sub_value in value.items():
                assert sub in block, f"{key}.{sub} is not a field of {classes[key]}"
                if sub != "enabled":  # the other values shown are DeepSpeed's defaults, as the page says
                    default = block[sub].split("=")[-1].strip()
                    assert float(default) == sub_value, (key, sub, default, sub_value)
    assert ("bf16" in settings) != ("fp16" in settings)
    assert "this mode cannot be combined with the `fp16` mode" in text  # the page: they are alternatives


def test_megatron_snippet_uses_fields_values_and_flags_of_megatron_core() -> None:
    text = excerpt("megatron_core.txt")
    parts = sections(text)
    tree = ast.parse((SNIPPETS / "megatron_core.py").read_text())
    files = {
        "TransformerConfig": [
            "megatron/core/transformer/transformer_config.py",
            "megatron/core/model_parallel_config.py",
        ],
        "OptimizerConfig": ["megatron/core/optimizer/optimizer_config.py"],
        "DistributedDataParallelConfig": ["megatron/core/distributed/distributed_data_parallel_config.py"],
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                init = parts[node.module.replace(".", "/") + "/__init__.py"]
                assert re.search(rf"\b{alias.name}\b", init), (node.module, alias.name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in files:
            known = {}
            for path in files[node.func.id]:
                known |= fields(parts[path])
            for kw in node.keywords:
                assert kw.arg in known, f"{node.func.id} has no field {kw.arg!r} in the excerpt"
                if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    assert f"'{kw.value.value}'" in known[kw.arg], (kw.arg, kw.value.value, known[kw.arg])
    assert "class TransformerConfig(ModelParallelConfig)" in text  # so its fields include bf16, fp16
    # Flags: named explicitly, or made by ArgumentGroupFactory from a TransformerConfig field.
    flags = re.findall(
        r"--[\w-]+",
        next(
            n.value.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "FLAGS"
        ),
    )
    assert 'arg_name = "--" + arg_name.replace("_", "-")' in text
    transformer_fields = fields(parts["megatron/core/transformer/transformer_config.py"]) | fields(
        parts["megatron/core/model_parallel_config.py"]
    )
    for flag in flags:
        explicit = f"'{flag}'" in text or f'"{flag}"' in text
        derived = flag[2:].replace("-", "_") in transformer_fields and flag[2:].replace("-", "_") != "fp8"
        assert explicit or derived, f"{flag} is not a flag of Megatron-LM according to the excerpt"


def test_transformer_engine_snippet_uses_names_of_transformer_engine() -> None:
    text = excerpt("transformer_engine.txt")
    tree = ast.parse((SNIPPETS / "transformer_engine.py").read_text())
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("transformer_engine"):
            used |= {alias.name for alias in node.names}
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("te", "Format")
        ):
            used.add(node.attr)
    assert {"Linear", "autocast", "DelayedScaling", "Float8CurrentScaling", "HYBRID"} <= used
    page = PAGE.read_text(encoding="utf-8")
    used |= set(re.findall(r"`te\.(\w+)", page))  # the modules the page names: te.LayerNormLinear, ...
    for name in used:
        assert re.search(rf"^(class {name}\b|from \S+ import {name}$| {{4}}{name} = )", text, re.MULTILINE), (
            name
        )
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.keywords]
    for call in calls:
        for kw in call.keywords:
            if kw.arg in ("device", "dtype"):  # torch's own arguments (torch.randn, torch.autocast)
                continue
            assert re.search(rf"\b{kw.arg}\b\s*:", text), f"{kw.arg!r} is not an argument in the excerpt"
    assert "fp8_autocast is deprecated" in text  # why the snippet uses te.autocast(recipe=...)
    assert "compute capability 8.9 or higher required for FP8" in text
    assert "Device compute capability 10.0 or higher required for MXFP8" in text
    assert "Device compute capability 10.0 or higher required for NVFP4" in text


def test_the_fp8_template_trains_and_resumes_with_torchao(tmp_path: Path) -> None:
    """The template's GPU path (torchao's Float8Linear) runs on a CPU too, where torch emulates the scaled
    matrix product: slowly, but enough to show that it trains and resumes bit for bit."""
    pytest.importorskip("torchao.float8", reason="torchao: make test-frameworks")
    from test_appendix_templates import SETTINGS, STEPS, run_twice

    from mpcourse.templates import train_fp8

    model = train_fp8.make_model()
    assert train_fp8.convert_linear_layers(model, train_fp8.Config(backend="torchao")) == "torchao"
    assert [type(m).__name__ for m in model if isinstance(m, torch.nn.Linear)] == [
        "Linear",
        "Float8Linear",
        "Linear",
    ]
    whole, resumed, whole_state, resumed_state = run_twice(train_fp8, tmp_path, {"backend": "torchao"})
    assert len(whole) == SETTINGS["steps"] == STEPS and sum(whole[-3:]) < sum(whole[:3]) - 0.3, whole
    assert resumed == whole
    assert all(torch.equal(whole_state["model"][k], resumed_state["model"][k]) for k in whole_state["model"])
