"""LightningCLI for the demo: train the character GPT from a YAML config, with or without the GEO parts.

```bash
lightning-geo fit --config examples/demo_geo.yaml
lightning-geo fit --config examples/demo_geo.yaml --print_config
lightning-geo fit --config examples/demo.yaml --trainer.max_steps 100
```

(``python -m lightning_geo.demo.lightning_cli`` is the same command.)

The model is ``CharLanguageModel``, the data
``CorpusDataModule`` (the corpus as a path; none: the Python standard library).
Three arguments are linked, so that a config never writes them twice:

- ``data.vocab -> model.vocab``: the vocabulary comes from the loaded corpus (linked after instantiation);
- ``data.seq_len -> model.seq_len``: the model's context is the data's window length;
- ``trainer.max_steps -> model.max_steps``: the cosine LR schedule ends where training does (1000 steps, the
  model's default, when ``max_steps`` is -1).

LightningCLI's own ``optimizer:`` / ``lr_scheduler:`` keys are turned off: they would replace the model's
``configure_optimizers`` (weight-decay groups, per-step warmup + cosine) by one optimizer over all parameters,
built before the strategy shards them. Choose the optimizer with ``model.optimizer: adamw | geo_adamw``.
Importing this module imports [`lightning_geo`][lightning_geo], which registers ``strategy: geo_hybrid``.
"""

from __future__ import annotations

import os
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, instantiate_class

import lightning_geo  # noqa: F401  (registers strategy="geo_hybrid" before any Trainer is built)
from lightning_geo.demo.data import CorpusDataModule
from lightning_geo.demo.model import CharLanguageModel
from lightning_geo.demo.run import demo_warning_filters

DESCRIPTION = (
    "Train, validate or test the lightning_geo demo (a character GPT) from YAML configs: "
    "fit --config examples/demo_geo.yaml trains with every GEO part."
)

UNBOUNDED_SCHEDULE_STEPS = 1000
"""Length of the LR schedule, in optimizer steps, when ``trainer.max_steps`` is -1 (the model's default)."""


def schedule_steps(max_steps: int) -> int:
    """The model's ``max_steps`` (LR schedule length, optimizer steps) for the Trainer's ``max_steps``.

    Args:
        max_steps: ``trainer.max_steps``; -1 (Lightning's default) means unbounded.

    Returns:
        ``max_steps`` when positive, else ``UNBOUNDED_SCHEDULE_STEPS``.
    """
    return max_steps if max_steps is not None and max_steps > 0 else UNBOUNDED_SCHEDULE_STEPS


def _refusal(value: Any, key: str, reported: str) -> str | None:
    """``<key>: <Class>: <Error>: <message>`` for the first ``class_path`` entry under ``value`` whose class
    rejects its own ``init_args`` with a message that ``reported`` (jsonargparse's error) contains."""
    if isinstance(value, Namespace) and isinstance(value.get("class_path"), str):
        init_args = value.get("init_args")
        try:
            instantiate_class((), {"class_path": value.class_path, "init_args": vars(init_args) if init_args else {}})
        except (ValueError, TypeError) as err:
            if str(err) in reported:
                owner = value.class_path.rsplit(".", 1)[-1]
                message = f"{type(err).__name__}: {err}"
                return f"{key}: {message}" if str(err).startswith(owner) else f"{key}: {owner}: {message}"
        return None
    if isinstance(value, Namespace):
        children: Any = ((f"{key}.{name}" if key else name, child) for name, child in vars(value).items())
    elif isinstance(value, list):
        children = ((f"{key}[{i}]", child) for i, child in enumerate(value))
    else:
        return None
    return next((found for name, child in children if (found := _refusal(child, name, reported))), None)


def describe_init_error(err: BaseException, config: Namespace) -> str:
    """The message for an error raised while instantiating ``config``, naming the class that refused a value.

    jsonargparse reports a class's own error inside a list of the union types it tried. The ``class_path``
    entry that raises it is found by instantiating each entry alone: ``trainer.plugins[0]:
    PredictiveScalingPrecision: ValueError: window=0 ...``. For the model and data (no ``class_path``), the
    chained cause names the class: ``CorpusDataModule: CorpusError: ...``. Otherwise jsonargparse's message.

    Args:
        err: The exception ``instantiate_classes`` raised.
        config: The parsed config (of the subcommand).
    """
    found = _refusal(config, "", str(err))
    if found:
        return found
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    owner = ""
    tb = cause.__traceback__
    while tb is not None:  # the innermost public class's __init__ on the way to the raise
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            name = type(frame.f_locals["self"]).__name__
            owner = owner if name.startswith("_") else name
        tb = tb.tb_next
    if not owner:
        return f"{type(err).__name__}: {err}"
    message = f"{type(cause).__name__}: {cause}"
    return message if str(cause).startswith(owner) else f"{owner}: {message}"


class DemoLightningCLI(LightningCLI):
    """LightningCLI over ``CharLanguageModel`` and ``CorpusDataModule``, with the demo's links.

    Subcommands ``fit``, ``validate`` and ``test`` (``test`` reports the loss on the held-out files under
    ``test/``; the demo has no prediction step). Every Trainer argument, GEO's included, is configurable:
    ``trainer.strategy: geo_hybrid``, ``trainer.plugins``, ``trainer.callbacks``.

    Args:
        args: Command-line arguments (without the program name); default ``sys.argv[1:]``.
        prog: Program name shown in help and errors. Default: Python's (the script name).
        run: Run the subcommand (default ``True``); ``False`` parses and instantiates only, without subcommands.
    """

    def __init__(self, args: list[str] | None = None, *, prog: str | None = None, run: bool = True) -> None:
        super().__init__(
            CharLanguageModel,
            CorpusDataModule,
            seed_everything_default=0,
            parser_kwargs={"description": DESCRIPTION, **({"prog": prog} if prog else {})},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``test`` with the arguments their Trainer methods take from the config."""
        return {name: kwargs for name, kwargs in LightningCLI.subcommands().items() if name != "predict"}

    def instantiate_classes(self) -> None:
        """Instantiate model, data, callbacks and Trainer; a value a class rejects is a usage error.

        A ``ValueError``/``TypeError`` raised by a class's ``__init__`` (``mode='sequence' is not one of ...``,
        a missing corpus) ends the program with ``error: <the class's message>`` and exit status 2, as a
        malformed value does at parse time, instead of a traceback. ``JSONARGPARSE_DEBUG=true`` re-raises it.
        """
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if os.environ.get("JSONARGPARSE_DEBUG", "").lower() in ("true", "yes", "on"):
                raise
            config = self.config[self.subcommand] if self.subcommand else self.config
            self.parser.error(describe_init_error(err, config))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link ``data.vocab``, ``data.seq_len`` and ``trainer.max_steps`` into the model's arguments."""
        parser.link_arguments("data.seq_len", "model.seq_len")
        parser.link_arguments("trainer.max_steps", "model.max_steps", compute_fn=schedule_steps)
        parser.link_arguments("data.vocab", "model.vocab", apply_on="instantiate")


def run_lightning_cli(args: list[str] | None = None, *, prog: str | None = None) -> None:
    """Run the demo's LightningCLI: ``fit``, ``validate`` or ``test`` from YAML configs and flags.

    Args:
        args: Command-line arguments, e.g. ``["fit", "--config", "examples/demo_geo.yaml"]``; default
            ``sys.argv[1:]``.
        prog: Program name for help and error messages (e.g. ``"lightning-geo"``). Default: the script's name.

    Raises:
        SystemExit: on a parse error (status 2, with jsonargparse's message naming the bad key) and after
            ``--help`` or ``--print_config`` (status 0).
    """
    with demo_warning_filters():
        DemoLightningCLI(args, prog=prog)


if __name__ == "__main__":
    run_lightning_cli()
