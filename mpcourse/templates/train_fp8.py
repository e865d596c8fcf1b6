"""Train a classifier with fp8 linear layers: torchao on GPUs with fp8 tensor cores, the course's emulation elsewhere.

A template from the course's appendix "Code templates": copy it, replace ``make_data`` and
``make_model`` with your own, and keep the loop. What it does, and why:

- There is no ``torch.float8`` to cast a model to: fp8 tensors in PyTorch are storage types
  (``torch.float8_e4m3fn``, ``torch.float8_e5m2``) that matrix products take only through scaled
  GEMMs. Training in fp8 means swapping linear layers for ones whose three GEMMs (forward, input
  gradient, weight gradient) quantise their operands to fp8 with a scale, here one scale per tensor,
  computed from the current amax ("tensorwise"): E4M3 for activations and weights, E5M2 for gradients.
- On NVIDIA GPUs of compute capability 8.9 or newer (L4, H100, ...), torchao's
  ``convert_to_float8_training`` does the swap and ``torch.compile`` fuses the casts. Elsewhere the
  course's ``mpcourse.fp8.convert_to_fp8`` runs the same recipe with exactly emulated fp8 products,
  so the template runs, and can be tested, anywhere (slowly).
- The first and last linear layers stay in higher precision, as torchao, Transformer Engine and
  DeepSeek-V3 do, and so does any layer whose dimensions are not multiples of 16 (what the fp8
  GEMM needs). Everything else runs under bf16 autocast with fp32 master weights; the scales adapt
  every step, so no loss scaler is needed.
- Clipping, gradient accumulation and a resumable checkpoint as in the bf16 template: the converted
  layers keep the parameter names of ``nn.Linear``, so the model's state_dict is the same.

Run it:  python train_fp8.py --steps 300 --checkpoint run.pt      (--backend torchao|emulated|auto)
Run the same command again after an interruption: it resumes from run.pt.
It needs the course's package (installed as the README or any chapter's setup cell shows); torchao (``pip install torchao``) for the GPU path.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.fp8 import convert_to_fp8, torchao_status


@dataclass
class Config:
    steps: int = 300  # optimizer steps in the whole run
    micro_batch: int = 32  # samples per forward/backward pass
    accumulation: int = 4  # micro-batches per optimizer step: the effective batch is 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 20  # steps of linear LR warm-up, then a cosine decay to 10 % of lr
    clip_norm: float = 1.0  # clip the gradient norm to this
    recipe: str = "tensorwise"  # fp8 scaling: "tensorwise" or "rowwise" (torchao's names)
    backend: str = (
        "auto"  # "torchao" (sm_89+ GPUs), "emulated" (anywhere), or "auto": torchao where it can run
    )
    seed: int = 0
    checkpoint: str | None = None  # save here, and resume from here if the file exists
    save_every: int = 50  # steps between checkpoints (and one at the end)
    stop_after: int | None = None  # stop after this many steps of this run (a job with a time limit)
    log_every: int = 50  # steps between printed lines; 0: print nothing
    device: str | None = None  # default: "cuda" if available, else "cpu"


#: Fields that may differ between a run and its resumption; any other difference is an error.
RUN_ONLY_FIELDS = ("checkpoint", "save_every", "stop_after", "log_every", "device")


def make_data(
    seed: int, n_train: int = 4096, n_eval: int = 1024
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A task a small network can learn: 32 features, 10 classes given by a fixed random "teacher"
    network. Replace it with your data set."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(32, 64, generator=g), torch.randn(64, 10, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 32, generator=g)
        return x, (torch.tanh(x @ w1) @ w2).argmax(-1)

    return {"train": sample(n_train), "eval": sample(n_eval)}


def make_model() -> nn.Module:
    """No softmax at the end: cross_entropy takes logits and applies log_softmax itself (in fp32)."""
    return nn.Sequential(
        nn.Linear(32, 128),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(128, 128),
        nn.GELU(),
        nn.Linear(128, 10),
    )


def micro_batches(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]], cfg: Config, start: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training micro-batches from number ``start`` on, for ever.

    Epoch ``e`` is shuffled by a generator seeded from ``(cfg.seed, e)`` alone, so which samples
    a micro-batch holds depends only on its number: a resumed run skips the ones already seen and
    gets exactly the batches the uninterrupted run would have got.
    """
    dataset = torch.utils.data.TensorDataset(*data["train"])
    per_epoch = len(dataset) // cfg.micro_batch
    epoch, skip = divmod(start, per_epoch)
    while True:
        order = torch.Generator().manual_seed(1_000_003 * cfg.seed + epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.micro_batch, shuffle=True, drop_last=True, generator=order
        )
        yield from itertools.islice(loader, skip, None)
        epoch, skip = epoch + 1, 0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``cfg.warmup`` steps, then a cosine decay to 10 % of the peak."""

    def factor(i: int) -> float:
        if i < cfg.warmup:
            return (i + 1) / cfg.warmup
        progress = min(1.0, (i - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def convert_linear_layers(model: nn.Module, cfg: Config) -> str:
    """Swap the eligible linear layers of ``model`` for fp8 ones, in place; returns the backend used."""
    backend = cfg.backend
    if backend == "auto":
        usable, why = torchao_status()
        backend = "torchao" if usable else "emulated"
        print(f"fp8 backend: {backend} ({why})")
    if backend == "torchao":
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]

        def eligible(module: nn.Module, name: str) -> bool:
            return (
                name not in (linears[0], linears[-1])  # first and last layers stay in bf16
                and module.in_features % 16 == 0
                and module.out_features % 16 == 0
            )

        config = Float8LinearConfig.from_recipe_name(cfg.recipe)
        convert_to_float8_training(model, config=config, module_filter_fn=eligible)
    elif backend == "emulated":
        convert_to_fp8(model, f"fp8_{cfg.recipe}")  # the same rules for which layers are converted
    else:
        raise ValueError(f"backend={backend!r}: use 'torchao', 'emulated' or 'auto'")
    return backend


def rng_state() -> dict[str, Any]:
    """Every random-number generator the next steps draw from (dropout, shuffling, augmentation).
    Add numpy.random's state here if your data pipeline uses it."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename it: a crash while saving leaves the last checkpoint whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, cfg: Config) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors on the CPU: load_state_dict moves them to the model's device).

    ``weights_only=True`` (torch.load's default in current releases) unpickles tensors and plain containers only:
    loading a checkpoint cannot run code. Raises ValueError if the checkpoint was written by a run with
    different settings, since continuing it with other ones would not be a resumption.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    now = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_FIELDS}
    then = {k: v for k, v in state["config"].items() if k not in RUN_ONLY_FIELDS}
    if now != then:
        changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
        raise ValueError(f"{path} was written with other settings ({', '.join(changed)}); use another path")
    return state


@torch.no_grad()
def evaluate(
    model: nn.Module, data: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> float:
    """Accuracy on the evaluation set, under the same autocast as training."""
    model.eval()
    x, y = (t.to(device) for t in data["eval"])
    with torch.autocast(device.type, dtype=torch.bfloat16):
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    model.train()
    return accuracy


def train(cfg: Config) -> list[float]:
    """Train for ``cfg.steps`` optimizer steps (resuming from ``cfg.checkpoint`` if it exists).

    Returns the loss of each optimizer step this run made (the mean over its effective batch).
    """
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = make_data(cfg.seed)
    if cfg.recipe not in ("tensorwise", "rowwise"):
        raise ValueError(f"recipe={cfg.recipe!r}: use 'tensorwise' or 'rowwise'")
    model = make_model().to(device)  # fp32 parameters: the master weights
    backend = convert_linear_layers(model, cfg)
    # torch.compile fuses torchao's scaling and casts into the neighbouring kernels; the uncompiled
    # module is the one whose state_dict the checkpoint holds.
    forward = torch.compile(model) if backend == "torchao" and device.type == "cuda" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)

    step = 0
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        state = load_checkpoint(cfg.checkpoint, cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])  # last: building the model above drew random numbers
        step = state["step"]

    stop = cfg.steps if cfg.stop_after is None else min(cfg.steps, step + cfg.stop_after)
    batches = micro_batches(data, cfg, start=step * cfg.accumulation)
    losses = []
    model.train()
    while step < stop:
        loss_sum = torch.zeros((), device=device)
        for _ in range(cfg.accumulation):
            x, y = (t.to(device, non_blocking=True) for t in next(batches))
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = forward(x)  # converted linear layers run fp8 GEMMs, the others bf16
                loss = F.cross_entropy(logits, y)  # on autocast's fp32 list
            # Backward outside autocast; no loss scaling. Gradients add up in the fp32 .grad.
            (loss / cfg.accumulation).backward()
            loss_sum += loss.detach() / cfg.accumulation

        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss_sum.item())

        if cfg.log_every and step % cfg.log_every == 0:
            print(f"step {step:5d}  loss {losses[-1]:.4f}  lr {scheduler.get_last_lr()[0]:.2e}")
        if cfg.checkpoint and (step % cfg.save_every == 0 or step == stop):
            save_checkpoint(
                cfg.checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "rng": rng_state(),
                    "config": asdict(cfg),
                },
            )
    if cfg.log_every:
        print(
            f"stopped at step {step} of {cfg.steps}; evaluation accuracy {evaluate(model, data, device):.3f}"
        )
    return losses


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    defaults = Config()
    for name, value in asdict(defaults).items():
        kind = {"stop_after": int, "checkpoint": str, "device": str}.get(name, type(value))
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    return Config(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
