"""``lightning_geo.recipe()``: GEO's measured best configuration as Trainer keyword arguments, in one line.

```python
trainer = L.Trainer(**lightning_geo.recipe(), max_steps=5000)
trainer = L.Trainer(  # budgeted in time only: the warmup's deadline in seconds (30% of 1 h), not a share
    **lightning_geo.recipe(callbacks=[ModelCheckpoint()], devices=2, seq_len_warmup="1080 seconds"),
    max_time="00:01:00:00",
)
```

The recipe is what won ``benchmarks/end_to_end.py`` (a GPT-2-shaped subword LM against tuned plain Lightning, on
wall-clock time to plain's final validation loss); each default below names the measurement that set it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_info

from lightning_geo.callbacks import BatchSizeSchedule, DynamicCurriculum, SparsityAwareLR
from lightning_geo.callbacks.curriculum_pacing import Deadline
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.strategies import GeoHybridStrategy
from lightning_geo.utils.cpu_precision import default_cpu_precision

RECIPE_PARTS: tuple[str, ...] = ("strategy", "precision", "seq_len_warmup", "sparsity", "batch_size")
"""The parts ``recipe()`` can switch on, by the names ``exclude`` and ``include`` take: ``geo_hybrid``,
``PredictiveScalingPrecision``, ``DynamicCurriculum(mode="seq_len")``, ``SparsityAwareLR`` and ``BatchSizeSchedule``.
(``GeoMuon`` is an optimizer: it is built in ``configure_optimizers``, not passed to the Trainer.)"""

DEFAULT_RECIPE_PARTS: tuple[str, ...] = ("strategy", "precision", "seq_len_warmup", "sparsity")
"""The parts on by default. ``benchmarks/end_to_end.py``'s leave-one-out ablation at the demo's budget (3 seeds):
without the warmup the recipe never reaches plain Lightning's final loss, without ``SparsityAwareLR`` it gets there
1.45x sooner instead of 1.77x; ``geo_hybrid`` is a single-device run on one device (nothing to remove there), and
the precision part trains bf16 with Lightning's own plugin (``PredictiveScalingPrecision`` there: 1.60x).
``batch_size`` is off until the long-budget ablation of ``benchmarks/end_to_end.py`` has measured it: switch it on
with ``include=["batch_size"]``."""

SEQ_LEN_WARMUP_DEADLINE = 0.3
"""Default share of training over which sequences grow from ``min_seq_len`` to full length (linear pacing), from
``benchmarks/end_to_end.py``'s pacing sweep (3 seeds): 0.5 reached plain Lightning's final loss a little sooner
(1.83x against 0.3's 1.77x at the demo's budget, 1.46x against 1.38x at 4x it; 0.15: 1.43x), while 0.3 ended
lower at 4x the budget (0.949 of plain's final loss against 0.952, median) and is the one checked at 16x (0.984):
a shorter warmup leaves more of a longer run at full length. ``recipe()``'s default for ``seq_len_warmup`` (written
there as its value, which the tests check is this one)."""

_MIXED = ("16-mixed", "bf16-mixed")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _default_precision(accelerator: str | None) -> str:
    """16-mixed where training runs on CUDA; on a CPU bf16-mixed where it has bf16 instructions, else 32-true (most
    CPUs emulate fp16, and those without bf16 instructions emulate bf16 too, many times slower than fp32)."""
    import torch

    on_cuda = accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
    if on_cuda:
        return "16-mixed"
    if accelerator not in (None, "auto", "cpu"):
        return "bf16-mixed"
    chosen = default_cpu_precision()
    if chosen == "32-true":
        rank_zero_info(
            "recipe(): the precision part does not apply here: this CPU has no bf16 instructions (no avx512_bf16, "
            "amx_bf16 or bf16 flag), where mixed precision is emulated and slower than fp32; training in 32-true. "
            "Pass precision='bf16-mixed' to train in bf16 anyway."
        )
    return chosen


def _part_names(argument: str, names: Any) -> set[str]:
    """The part names ``exclude=`` or ``include=`` gave (one name or several), each checked."""
    if isinstance(names, str):
        names = [names]
    try:
        chosen = set(names)
    except TypeError:
        raise TypeError(
            f"recipe({argument}=...): expected part names (a list of strings), got {names!r}; "
            f"the parts are {list(RECIPE_PARTS)}"
        ) from None
    unknown = sorted(map(repr, chosen - set(RECIPE_PARTS)))
    if unknown:
        raise ValueError(f"recipe({argument}=...): unknown part(s) [{', '.join(unknown)}]; "
                         f"the parts are {list(RECIPE_PARTS)}")
    return chosen


def recipe(
    *,
    callbacks: Callback | Sequence[Callback] | None = None,
    plugins: Any = None,
    precision: str | None = None,
    strategy: str | Strategy | None = None,
    accelerator: str | None = None,
    devices: int | str | list[int] | None = None,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    seq_len_warmup: float | str = 0.3,  # SEQ_LEN_WARMUP_DEADLINE, written as its value for the API reference
) -> dict[str, Any]:
    """Trainer keyword arguments that switch on GEO's measured best configuration, merged with your own.

    What it adds (each can be left out with ``exclude``):

    - ``strategy``: ``"geo_hybrid"``: on one device a plain single-device run; on several, the parallel plan
      [`GeoHybridStrategy`][lightning_geo.strategies.GeoHybridStrategy] picks.
    - ``precision``: mixed precision: ``16-mixed`` on CUDA, with
      [`PredictiveScalingPrecision`][lightning_geo.precision.PredictiveScalingPrecision] (the loss scale predicted, not
      found by overflowing); ``bf16-mixed`` elsewhere, with Lightning's own plugin (``precision="bf16-mixed"``): bf16
      has fp32's range, so there is no scale to predict, and in ``benchmarks/end_to_end.py`` the plugin's measuring cost
      10% of the CPU's throughput in bf16 for nothing. On a CPU without bf16 instructions (AVX2-only x86, for one)
      bf16 is emulated, ~12x slower per step than fp32: there the recipe trains in ``32-true`` and says once that the
      precision part does not apply.
    - ``seq_len_warmup``: [`DynamicCurriculum`][lightning_geo.callbacks.DynamicCurriculum] ``(mode="seq_len",
      pacing="linear", deadline=seq_len_warmup)``: batches start at 8 tokens and reach full length by the deadline.
    - ``sparsity``: [`SparsityAwareLR`][lightning_geo.callbacks.SparsityAwareLR] with its defaults (embedding rows'
      learning rate from their gradient density; it says once where it cannot act: a tied or positional embedding).
    - ``batch_size`` (off by default, not yet measured end to end; ``include=["batch_size"]``):
      [`BatchSizeSchedule`][lightning_geo.callbacks.BatchSizeSchedule] with its defaults (gradient accumulation grown
      from the measured gradient noise scale, the learning rate by its square root).

    Merging rules: your ``callbacks`` come after GEO's; a callback of a GEO part's own class that you pass
    replaces the recipe's (your settings win; a ``DynamicCurriculum`` of another mode replaces the warmup, and
    ``recipe()`` says so once). Your ``plugins`` are kept; your own ``PredictiveScalingPrecision`` replaces the
    recipe's, any other ``Precision`` plugin conflicts with the precision part. ``accelerator`` and ``devices``
    pass through (and pick the default precision). Pass all of these to ``recipe()``, not beside it:
    ``Trainer(**recipe(), callbacks=...)`` is a duplicate keyword.

    Args:
        callbacks: Your callbacks (one or a list). Default none.
        plugins: Your Trainer plugins (one or a list). Default none.
        precision: ``"16-mixed"`` or ``"bf16-mixed"`` for the precision part; any Lightning precision when
            ``"precision"`` is excluded. Default ``None`` (see above).
        strategy: ``None``, ``"geo_hybrid"`` or a ``GeoHybridStrategy``; any strategy when ``"strategy"`` is
            excluded. Default ``None``.
        accelerator: Passed to the Trainer when given. Default ``None`` (Lightning's ``"auto"``).
        devices: Passed to the Trainer when given. Default ``None`` (Lightning's ``"auto"``).
        exclude: Names from [`RECIPE_PARTS`][lightning_geo.recipes.RECIPE_PARTS] to leave out. Default none.
        include: Names from [`RECIPE_PARTS`][lightning_geo.recipes.RECIPE_PARTS] that are off by default to switch
            on (``"batch_size"``). Default none.
        seq_len_warmup: The curriculum's deadline: a share of the run's steps (default 0.3,
            [`SEQ_LEN_WARMUP_DEADLINE`][lightning_geo.recipes.SEQ_LEN_WARMUP_DEADLINE]), or
            ``"<N> tokens|steps|seconds"``.

    Returns:
        A dict for ``L.Trainer(**...)`` with ``strategy``, ``plugins`` and ``callbacks`` (and ``precision``,
        ``accelerator``, ``devices`` where they apply).

    Raises:
        ValueError: naming the argument for an unknown part in ``exclude`` or ``include`` (or one in both), a
            malformed ``seq_len_warmup``, a ``strategy`` other than geo_hybrid, a precision the precision part cannot
            train in, or a ``Precision`` plugin in ``plugins`` while the precision part is on.
    """
    excluded, included = _part_names("exclude", exclude), _part_names("include", include)
    if included & excluded:
        raise ValueError(f"recipe(): {sorted(included & excluded)} is both in include= and in exclude=; pick one")
    excluded |= set(RECIPE_PARTS) - set(DEFAULT_RECIPE_PARTS) - included
    try:
        Deadline.parse(seq_len_warmup)
    except ValueError as err:  # its message names the curriculum's deadline=; here the argument is seq_len_warmup=
        rest = str(err).removeprefix(f"deadline={seq_len_warmup!r}")  # " is not ..." or ": a share ..."
        raise ValueError(f"recipe(seq_len_warmup={seq_len_warmup!r}){rest}") from None
    user_callbacks = _as_list(callbacks)
    user_plugins = _as_list(plugins)
    for callback in user_callbacks:
        if not isinstance(callback, Callback):
            raise ValueError(f"recipe(callbacks=...): {callback!r} is not a Lightning Callback")
    kwargs: dict[str, Any] = {}
    if accelerator is not None:
        kwargs["accelerator"] = accelerator
    if devices is not None:
        kwargs["devices"] = devices

    if "strategy" in excluded:
        if strategy is not None:
            kwargs["strategy"] = strategy
    elif strategy is None or strategy == "geo_hybrid" or isinstance(strategy, GeoHybridStrategy):
        kwargs["strategy"] = strategy if strategy is not None else "geo_hybrid"
    else:
        raise ValueError(
            f"recipe(strategy={strategy!r}) conflicts with the recipe's strategy 'geo_hybrid'; pass "
            "exclude=['strategy'] to train with your own strategy"
        )

    if "precision" in excluded:
        if precision is not None:
            kwargs["precision"] = precision
    else:
        if precision is not None and precision not in _MIXED:
            raise ValueError(
                f"recipe(precision={precision!r}): the recipe's PredictiveScalingPrecision trains in 16-mixed or "
                "bf16-mixed; pass one of those, or exclude=['precision'] to train in another precision"
            )
        own = [p for p in user_plugins if isinstance(p, Precision) and not isinstance(p, PredictiveScalingPrecision)]
        if own:
            raise ValueError(
                f"recipe(plugins=...): {type(own[0]).__name__} is a precision plugin, and the recipe brings its own "
                "(PredictiveScalingPrecision); pass exclude=['precision'] to keep yours"
            )
        chosen = precision or _default_precision(accelerator)
        if any(isinstance(p, PredictiveScalingPrecision) for p in user_plugins):
            pass  # yours, with your settings, in whatever precision you built it for
        elif chosen == "16-mixed":
            user_plugins = [PredictiveScalingPrecision("16-mixed"), *user_plugins]
        else:  # bf16 has fp32's range: no loss scale to predict, and the plugin's measuring would cost time
            kwargs["precision"] = chosen

    geo_callbacks: list[Callback] = []
    user_curriculum = next((c for c in user_callbacks if isinstance(c, DynamicCurriculum)), None)
    if "seq_len_warmup" in excluded:
        pass
    elif user_curriculum is None:
        geo_callbacks.append(
            DynamicCurriculum(mode="seq_len", pacing="linear", deadline=seq_len_warmup, on_unrecognized="warn")
        )
    elif user_curriculum.mode != "seq_len":
        rank_zero_info(
            f"recipe(): your DynamicCurriculum(mode={user_curriculum.mode!r}) replaces the recipe's sequence-length "
            "warmup (one DynamicCurriculum per Trainer); seq_len_warmup is not used"
        )
    if "sparsity" not in excluded and not any(isinstance(c, SparsityAwareLR) for c in user_callbacks):
        geo_callbacks.append(SparsityAwareLR())
    if "batch_size" not in excluded and not any(isinstance(c, BatchSizeSchedule) for c in user_callbacks):
        geo_callbacks.append(BatchSizeSchedule())
    kwargs["callbacks"] = [*geo_callbacks, *user_callbacks]
    if user_plugins:
        kwargs["plugins"] = user_plugins
    return kwargs
