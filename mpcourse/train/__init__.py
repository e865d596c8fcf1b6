"""The training engine every chapter uses: model + data + precision recipe -> a history.

One call trains a model under a precision recipe and records what happened::

    from mpcourse import data, models, train

    digits = data.load_images()                      # offline: the 8x8 digits shipped in mpcourse/datasets
    run = train.train(lambda: models.for_data(digits), digits, "bf16", steps=200)
    run.frame                                        # loss, accuracy, samples/s, memory, loss scale, ...
    train.plot_histories([run, ...]).show()

Every step of every run is :func:`train_step` (``mpcourse.show_source(train.train_step)`` shows
it): forward and loss under ``torch.autocast``, backward outside it on the scaled loss,
``scaler.unscale_`` before clipping, ``scaler.step`` and ``scaler.update``.

Extension points, for later chapters:

- :class:`Recipe` + :func:`register_recipe`: a new precision recipe (fp8 recipes swap layers in
  ``prepare_model``; pure-bf16 recipes with stochastic rounding or Kahan summation bring their
  optimizer in ``make_optimizer``).
- ``train(..., scaler=...)``: any object with ``torch.amp.GradScaler``'s methods replaces the
  recipe's default scaler (``scaler=False`` turns scaling off).
- ``train(..., caps=mpcourse.device.capabilities(preset="t4"))`` asks what a device would do, and
  ``on_unsupported="error"`` turns "emulated" into an error naming the recipe to use instead.
"""

from .engine import ON_UNSUPPORTED, OPTIMIZERS, UnsupportedRecipeError, evaluate, matmul_precision, train
from .history import COLUMNS, History, compare, plot_histories, smooth
from .recipes import RECIPES, Recipe, alternative, get_recipe, register_recipe
from .step import ScalerLike, StepResult, train_step

__all__ = [
    "COLUMNS",
    "ON_UNSUPPORTED",
    "OPTIMIZERS",
    "RECIPES",
    "History",
    "Recipe",
    "ScalerLike",
    "StepResult",
    "UnsupportedRecipeError",
    "alternative",
    "compare",
    "evaluate",
    "get_recipe",
    "matmul_precision",
    "plot_histories",
    "register_recipe",
    "smooth",
    "train",
    "train_step",
]
