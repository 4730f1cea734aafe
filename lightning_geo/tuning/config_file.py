"""A study from a YAML file, LightningCLI style: ``lightning-geo tune --config study.yaml``.

Example file::

    monitor: val_loss
    mode: min
    max_trials: 20
    pruner: median            # median | curve | none
    storage: sqlite:///runs/study.db   # optional: an Optuna storage URL (default: a JSON lines file)
    space:                    # "<section>.<argument>": a dimension or a fixed value
      model.lr: {float: [1.0e-4, 1.0e-1], log: true}
      model.hidden: {int: [16, 256], log: true}
      model.act: {categorical: [relu, gelu]}
      data.batch_size: {categorical: [32, 64]}
      trainer.gradient_clip_val: 1.0
    model:
      class_path: my_project.models.MyModule
      init_args: {dropout: 0.1}
    data:                     # optional
      class_path: my_project.data.MyDataModule
      init_args: {root: data/}
    trainer: {max_epochs: 5, accelerator: auto}

Each trial builds ``model`` and ``data`` from their ``class_path`` with ``init_args`` updated by the trial's
``model.*``/``data.*`` values, and a ``Trainer`` from ``trainer`` (+ ``trainer.*`` values) with the trial's
``TrialReporter`` and TensorBoard logger added.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_geo.tuning.space import SearchSpace
from lightning_geo.tuning.trial import Trial

_SECTIONS = ("model", "data", "trainer")
_STUDY_KEYS = ("monitor", "mode", "max_trials", "pruner", "seed", "num_initial", "n_parallel", "executor", "storage")


def _import(class_path: str) -> type:
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path={class_path!r} must be a dotted path such as 'my_project.models.MyModule'")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import class_path={class_path!r}: {err}") from None


@dataclass
class ConfigTrainFn:
    """``train_fn`` of a config-file study (picklable, so it also runs with ``executor: subprocess``).

    Args:
        model: ``{"class_path": ..., "init_args": {...}}`` of the LightningModule.
        data: The same for a LightningDataModule, or ``None`` if the module has its own dataloaders.
        trainer: ``Trainer`` keyword arguments.
    """

    model: dict[str, Any]
    data: dict[str, Any] | None = None
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("model", "data"):
            section = getattr(self, name)
            if section is None:
                continue
            if not isinstance(section, Mapping) or "class_path" not in section:
                raise ValueError(
                    f"{name}: expected a mapping with 'class_path' (and optional 'init_args'), got {section!r}"
                )
            _import(section["class_path"])  # fail now, not in every trial

    @staticmethod
    def _build(section: Mapping[str, Any], overrides: dict[str, Any]) -> Any:
        return _import(section["class_path"])(**{**section.get("init_args", {}), **overrides})

    def __call__(self, config: dict[str, Any], trial: Trial) -> Any:
        import lightning.pytorch as pl

        parts: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
        for key, value in config.items():
            section, _, name = key.partition(".")
            parts[section][name] = value
        model = self._build(self.model, parts["model"])
        data = self._build(self.data, parts["data"]) if self.data is not None else None
        callbacks = [*self.trainer.get("callbacks", []), trial.reporter()]
        options = {**self.trainer, **parts["trainer"], "callbacks": callbacks, "logger": trial.logger()}
        trainer = pl.Trainer(**options)
        trainer.fit(model, datamodule=data)
        return dict(trainer.callback_metrics)


def load_study_file(path: str | Path) -> tuple[SearchSpace, dict[str, Any], ConfigTrainFn]:
    """Read a study file: its search space, the ``GeoTuner`` keyword arguments it sets, and its ``train_fn``.

    Raises:
        ValueError: for a missing or unknown section, a space key outside ``model.``/``data.``/``trainer.``,
            or a class that cannot be imported.
    """
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the study file {path}: {' '.join(str(err).split())}") from None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    unknown = set(spec) - {"space", *_SECTIONS, *_STUDY_KEYS}
    if unknown:
        allowed = ", ".join(("space", *_SECTIONS, *_STUDY_KEYS))
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {allowed}")
    for required in ("space", "model"):
        if required not in spec:
            raise ValueError(f"{path}: the '{required}' section is missing")
    for key in spec["space"]:
        if key.partition(".")[0] not in _SECTIONS or "." not in key:
            raise ValueError(f"{path}: space key {key!r} must start with 'model.', 'data.' or 'trainer.'")
    space = SearchSpace.from_dict(spec["space"])
    options = {k: spec[k] for k in _STUDY_KEYS if k in spec}
    if options.get("pruner") == "none":
        options["pruner"] = None
    train_fn = ConfigTrainFn(spec["model"], spec.get("data"), dict(spec.get("trainer") or {}))
    return space, options, train_fn
