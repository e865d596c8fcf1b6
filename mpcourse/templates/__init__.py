"""Complete training scripts to copy: the appendix "Code templates" of the course (book/code_templates.md).

Each module is a standalone script (``python -m mpcourse.templates.train_fp16 --help``, or the file
downloaded from the website) with the same parts: synthetic data and a small model to replace with
yours, a ``Config``, and a ``train(cfg)`` loop with gradient clipping, gradient accumulation, an LR
schedule and a checkpoint that resumes bit for bit. They differ in the precision:

- :mod:`~mpcourse.templates.train_fp16`: fp16 autocast with ``torch.amp.GradScaler``;
- :mod:`~mpcourse.templates.train_bf16`: bf16 autocast, no scaler;
- :mod:`~mpcourse.templates.train_pure_bf16`: bf16 weights and optimizer state, updated with stochastic
  rounding or Kahan compensation (:class:`mpcourse.bf16.BF16AdamW`);
- :mod:`~mpcourse.templates.train_fp8`: fp8 linear layers, torchao on GPUs with fp8 tensor cores and
  :func:`mpcourse.fp8.convert_to_fp8` (exact emulation) elsewhere.

The tests (tests/test_appendix_templates.py) train each for a few steps on a CPU, check that the loss
falls and that a run interrupted and resumed from its checkpoint ends bit for bit where the
uninterrupted run ends, and that the parts the templates share are written identically in each.
"""

from __future__ import annotations

#: name -> module of this package, in the order the appendix presents them.
TEMPLATES: dict[str, str] = {
    "fp16": "train_fp16",
    "bf16": "train_bf16",
    "pure_bf16": "train_pure_bf16",
    "fp8": "train_fp8",
}

#: Functions every template defines with the same source (the tests check it).
SHARED_FUNCTIONS: tuple[str, ...] = (
    "make_data",
    "make_model",
    "micro_batches",
    "make_scheduler",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "parse_args",
    "main",
)

__all__ = ["SHARED_FUNCTIONS", "TEMPLATES"]
