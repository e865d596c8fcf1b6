"""``mpcourse bench fp8_recipes``: fp8 and fp4 training recipes compared on a model with outlier channels.

The fp8_training chapter trains :func:`mpcourse.fp8.outliers.outlier_transformer` with every recipe
at a size CI can afford, which is enough to exercise each recipe but too short to separate recipes
whose losses differ by less than the run-to-run spread. This benchmark runs the same comparison
longer and on more seeds, and stores it (``--save``; ``mpcourse record`` names the file after the
machine) so the chapter can show it next to its own short run. Losses, not speed, are its result:
on a CPU every fp8 recipe is emulated and slow, and the losses are what the arithmetic gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .. import sizes
from . import results

#: The model and optimiser of the comparison, the same at every size.
BASE: dict[str, Any] = {"gain": 1e5, "width": 128, "depth": 2, "block_size": 32, "lr": 3e-3}

#: The recipes compared, in the order tables and plots show them: (label, recipe name, first and
#: last linear layers kept in bf16).
RECIPES: tuple[tuple[str, str, bool], ...] = (
    ("bf16", "bf16", True),
    ("tensorwise", "fp8_tensorwise", True),
    ("delayed (legacy)", "fp8_delayed", True),
    ("rowwise", "fp8_rowwise", True),
    ("rowwise, bf16 wgrad", "fp8_rowwise_gw_hp", True),
    ("blockwise 1x128", "fp8_blockwise", True),
    ("MXFP8", "mxfp8", True),
    ("NVFP4", "nvfp4", True),
    ("NVFP4, every layer", "nvfp4", False),
)


def config(quick: bool = False) -> dict[str, Any]:
    """Sizes of the stored comparison for the active profile (``quick``: a smoke run of a few steps).

    These are the benchmark's sizes, longer than a chapter can afford: :func:`chapter_config` gives
    the chapter's.
    """
    if quick:
        return BASE | {"steps": 4, "batch_size": 4, "seeds": [0]}
    return BASE | sizes.pick(
        ci={"steps": 30, "batch_size": 8, "seeds": [0]},
        small={"steps": 600, "batch_size": 16, "seeds": [0, 1, 2]},
        full={"steps": 1000, "batch_size": 32, "seeds": [0, 1, 2]},
    )


def chapter_config() -> dict[str, Any]:
    """Sizes of the comparison the fp8_training chapter runs live: a minute or less on a CPU in
    every profile but ``full`` (a GPU), where it runs three seeds."""
    return BASE | sizes.pick(
        ci={"steps": 30, "batch_size": 8, "seeds": [0]},
        small={"steps": 60, "batch_size": 8, "seeds": [0, 1]},
        full={"steps": 300, "batch_size": 16, "seeds": [0, 1, 2]},
    )


def recipe(name: str, skip_first_last: bool):
    """The training recipe for a row of :data:`RECIPES`."""
    from ..fp8 import outliers

    return name if skip_first_last or name == "bf16" else outliers.with_layers(name, skip_first_last=False)


def run(cfg: dict[str, Any], recipes=RECIPES):
    """Train every recipe of ``recipes`` on every seed of ``cfg``; returns the list of RecipeRun."""
    from .. import data
    from ..fp8 import outliers

    text = data.load_text("pydoc", source="local", block_size=cfg["block_size"], verbose=False)
    make = lambda: outliers.outlier_transformer(
        text, gain=cfg["gain"], width=cfg["width"], depth=cfg["depth"]
    )
    return outliers.compare_recipes(
        make,
        text,
        [recipe(name, keep) for _, name, keep in recipes],
        labels=[label for label, _, _ in recipes],
        seeds=cfg["seeds"],
        steps=cfg["steps"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
    )


def curves(runs) -> pd.DataFrame:
    """One row per recipe, seed and step: training loss, and held-out loss where it was evaluated."""
    frames = []
    for r in runs:
        f = r.history.frame[["step", "loss", "eval_loss"]].copy()
        f.insert(0, "seed", r.seed)
        f.insert(0, "recipe", r.label)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def benchmark(save: Path | None, quick: bool, force: bool = False) -> int:
    """Run the comparison, print the table of gaps to bf16, and store the runs in ``save``."""
    from ..fp8 import outliers

    if save is not None:
        results.ensure_writable(save, overwrite=force, what="result file")
    cfg = config(quick)
    print(
        f"fp8 recipes on a character transformer (width {cfg['width']}, depth {cfg['depth']}) with two outlier "
        f"channels of gain {cfg['gain']:g}: {cfg['steps']} steps of {cfg['batch_size']} sequences, seeds {cfg['seeds']}"
    )
    runs = run(cfg)
    table = outliers.gaps(runs)
    print(table.round(4).to_string())
    if save is not None:
        record = results.make_record(
            "fp8_recipes",
            {
                "config": [cfg | {"seeds": ",".join(map(str, cfg["seeds"]))}],
                "gaps": table.reset_index(),
                "curves": curves(runs),
                "layers": pd.DataFrame(
                    [
                        {"recipe": label, "name": name, "first_last_bf16": keep}
                        for label, name, keep in RECIPES
                    ]
                ),
            },
            command="mpcourse bench fp8_recipes --save " + Path(save).name,
        )
        print(f"saved to {results.save(record, save, overwrite=force)}")
    return 0


def stored_gaps(record: dict[str, Any]) -> pd.DataFrame:
    """The gap table of a stored record, indexed by recipe."""
    return pd.DataFrame(record["tables"]["gaps"]).set_index("recipe")


__all__ = [
    "BASE",
    "RECIPES",
    "benchmark",
    "chapter_config",
    "config",
    "curves",
    "recipe",
    "run",
    "stored_gaps",
]
