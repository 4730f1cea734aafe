"""A study from a YAML file, LightningCLI style: ``lightning-geo tune --config study.yaml``.

Example file:

```yaml
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
```

Each trial builds ``model`` and ``data`` from their ``class_path`` with ``init_args`` updated by the trial's
``model.*``/``data.*`` values, and a ``Trainer`` from ``trainer`` (+ ``trainer.*`` values) with the trial's
``TrialReporter`` and TensorBoard logger added.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable, Mapping
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


def _hint(name: str, allowed: Iterable[str]) -> str:
    """``"did you mean 'lr'? "`` for a name close to an allowed one, else ``""``."""
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _keyword_arguments(target: Any) -> tuple[set[str], set[str]] | None:
    """The keyword arguments ``target`` (a class or a function) accepts and those of them without a default, or
    ``None`` when it takes ``**kwargs`` (then any name may be right)."""
    try:
        parameters = list(inspect.signature(target).parameters.values())  # of a class: its __init__'s, less self
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {p.name for p in named}, {p.name for p in named if p.default is p.empty}


def _check_arguments(path: Path, where: str, target: Any, given: Mapping[str, Any], searched: Iterable[str]) -> None:
    """Every name in ``given`` (a section's fixed arguments) and ``searched`` (its ``space`` keys) is an argument of
    ``target``, and every argument without a default is set by one of them."""
    accepted = _keyword_arguments(target)
    if accepted is None:
        return
    names, required = accepted
    allowed = ", ".join(sorted(names)) or "none"
    title = getattr(target, "__qualname__", repr(target))
    for key in given:
        if key not in names:
            raise ValueError(f"{path}: {where}: {key!r} is not an argument of {title}; {_hint(key, names)}"
                             f"its arguments: {allowed}")
    section = where.partition(".")[0]
    for key in searched:
        if key not in names:
            raise ValueError(f"{path}: space key '{section}.{key}': {key!r} is not an argument of {title}; "
                             f"{_hint(key, names)}its arguments: {allowed}")
    missing = sorted(required - set(given) - set(searched))
    if missing:
        raise ValueError(f"{path}: {where}: {title} needs {', '.join(map(repr, missing))} (no default); set it there "
                         f"or search it in space as '{section}.{missing[0]}'")


def _check_sections(path: Path, spec: Mapping[str, Any]) -> None:
    """Before any trial runs: the model's and data's ``init_args`` and the trainer's keys, fixed or searched, are
    arguments of their class (the ``Trainer``'s for ``trainer``)."""
    import lightning.pytorch as pl

    searched: dict[str, list[str]] = {s: [] for s in _SECTIONS}
    for key in spec["space"]:
        section, _, name = key.partition(".")
        searched[section].append(name)
    for name in ("model", "data"):
        section = spec.get(name)
        if section is None:
            if searched[name]:
                raise ValueError(f"{path}: space key '{name}.{searched[name][0]}' needs a '{name}' section "
                                 "(class_path and init_args)")
            continue
        if not isinstance(section, Mapping) or "class_path" not in section:
            raise ValueError(f"{path}: {name}: expected a mapping with 'class_path' (and optional 'init_args'), "
                             f"got {section!r}")
        unknown = sorted(set(section) - {"class_path", "init_args"})
        if unknown:
            hint = _hint(unknown[0], ["class_path", "init_args"])
            raise ValueError(f"{path}: {name}: unknown key {unknown[0]!r}; {hint}allowed: class_path, init_args")
        init_args = section.get("init_args") or {}
        if not isinstance(init_args, Mapping):
            raise ValueError(f"{path}: {name}.init_args: expected a mapping of argument names to values, "
                             f"got {init_args!r}")
        _check_arguments(path, f"{name}.init_args", _import(section["class_path"]), init_args, searched[name])
    trainer = spec.get("trainer") or {}
    if not isinstance(trainer, Mapping):
        raise ValueError(f"{path}: trainer: expected a mapping of Trainer arguments, got {trainer!r}")
    _check_arguments(path, "trainer", pl.Trainer, trainer, searched["trainer"])


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
        ValueError: for a missing or unknown section, a space key outside ``model.``/``data.``/``trainer.``, a
            bad space entry, a class that cannot be imported, or a key in ``init_args``, ``trainer`` or the space
            that is not an argument of its class (the ``Trainer`` for ``trainer``), naming it and the allowed ones.
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
        allowed = ("space", *_SECTIONS, *_STUDY_KEYS)
        first = sorted(unknown, key=str)[0]
        raise ValueError(f"{path}: unknown keys {sorted(unknown, key=str)}; {_hint(str(first), allowed)}"
                         f"allowed: {', '.join(allowed)}")
    for required in ("space", "model"):
        if required not in spec:
            raise ValueError(f"{path}: the '{required}' section is missing")
    if not isinstance(spec["space"], Mapping):
        raise ValueError(f"{path}: space: expected a mapping of 'section.argument' keys, got {spec['space']!r}")
    for key in spec["space"]:
        if not isinstance(key, str) or key.partition(".")[0] not in _SECTIONS or "." not in key:
            raise ValueError(f"{path}: space key {key!r} must start with 'model.', 'data.' or 'trainer.'")
    try:
        space = SearchSpace.from_dict(spec["space"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: space: {err}") from None
    _check_sections(path, spec)
    options = {k: spec[k] for k in _STUDY_KEYS if k in spec}
    if options.get("pruner") == "none":
        options["pruner"] = None
    train_fn = ConfigTrainFn(spec["model"], spec.get("data"), dict(spec.get("trainer") or {}))
    return space, options, train_fn
