"""``python -m river_torchrec``: the ``river-torchrec`` command."""

from river_torchrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
