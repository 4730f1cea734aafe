"""``python -m lightning_geo``: the same command line as the ``lightning-geo`` console script."""

from lightning_geo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
