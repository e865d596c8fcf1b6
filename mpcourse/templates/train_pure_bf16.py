"""Train a classifier in pure bf16: bf16 weights, gradients and optimizer state, with stochastic rounding or Kahan summation.

A template from the course's appendix "Code templates": copy it, replace ``make_data`` and
``make_model`` with your own, and keep the loop. What it does, and why:

- Everything is bf16: the weights, their gradients and Adam's moments (8 bytes per weight instead
  of mixed precision's 16). There are no fp32 master weights, so a plain bf16 update ``w + u`` would
  round away every ``u`` smaller than about 2^-9 of ``w``. The optimizer, the course's
  ``mpcourse.bf16.BF16AdamW``, computes the update in fp32 and writes the new weight back with
  stochastic rounding (``--update stochastic``: unbiased on average) or Kahan compensation
  (``--update kahan``: one more bf16 number per weight keeps what rounding dropped). The production
  tool for the first is torchao's ``_AdamW(bf16_stochastic_round=True)``.
- The loss is computed in fp32 from the bf16 logits. There is no autocast (the model is bf16
  already) and no loss scaler (bf16 has fp32's exponent range).
- Gradients of the micro-batches are summed in fp32 buffers and rounded to bf16 once per step: a sum
  of ``accumulation`` bf16 gradients would be rounded ``accumulation`` times. (This costs 4 bytes per
  weight while accumulating; DeepSpeed's ``data_types.grad_accum_dtype`` makes the same choice.)
- A checkpoint holds everything the next steps depend on: model, optimizer (with its Kahan
  buffers), LR schedule, the step and every random-number generator, including the one that draws
  the stochastic roundings. A resumed run then continues bit for bit, on the same machine and software.

Run it:  python train_pure_bf16.py --steps 300 --update stochastic --checkpoint run.pt
Run the same command again after an interruption: it resumes from run.pt.
It needs the course's package for BF16AdamW (installed as the course's README or any chapter's setup cell shows).
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

from mpcourse.bf16 import BF16AdamW


@dataclass
class Config:
    steps: int = 300  # optimizer steps in the whole run
    micro_batch: int = 32  # samples per forward/backward pass
    accumulation: int = 4  # micro-batches per optimizer step: the effective batch is 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 20  # steps of linear LR warm-up, then a cosine decay to 10 % of lr
    clip_norm: float = 1.0  # clip the gradient norm to this
    update: str = "stochastic"  # how BF16AdamW writes new weights back: "stochastic" or "kahan"
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
    """Accuracy on the evaluation set, computed in bf16 like training."""
    model.eval()
    x, y = data["eval"][0].to(device, torch.bfloat16), data["eval"][1].to(device)
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
    model = make_model().to(device, torch.bfloat16)  # no fp32 copy of the weights anywhere
    if cfg.update not in ("stochastic", "kahan"):
        raise ValueError(
            f"update={cfg.update!r}: use 'stochastic' or 'kahan' (round to nearest loses small updates)"
        )
    optimizer = BF16AdamW(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        update=cfg.update,
        state_dtype=torch.bfloat16,  # Adam's moments in bf16 too
        seed=cfg.seed,  # seeds the stochastic roundings
    )
    scheduler = make_scheduler(optimizer, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_sums = [torch.zeros_like(p, dtype=torch.float32) for p in params] if cfg.accumulation > 1 else []

    step = 0
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        state = load_checkpoint(cfg.checkpoint, cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # its moments, and the generators of its roundings
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
            x, y = next(batches)
            logits = model(x.to(device, torch.bfloat16))  # bf16 weights, bf16 activations
            loss = F.cross_entropy(logits.float(), y.to(device))  # the loss in fp32
            (loss / cfg.accumulation).backward()  # bf16 gradients
            for grad_sum, p in zip(grad_sums, params):
                grad_sum += p.grad  # summed in fp32...
                p.grad = None
            loss_sum += loss.detach() / cfg.accumulation
        for grad_sum, p in zip(grad_sums, params):
            p.grad = grad_sum.to(torch.bfloat16)  # ...and rounded to bf16 once
            grad_sum.zero_()

        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        optimizer.step()  # fp32 arithmetic, written back with stochastic rounding or Kahan compensation
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
