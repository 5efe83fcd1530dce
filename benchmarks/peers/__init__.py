"""Helpers of ``benchmarks/run_all.py``: the peer models, their common input, and the worker.

Nothing here is part of the library. ``worker.py`` runs one model per process (so each
model's peak RSS is its own) and ``deep_river_runner.py`` runs deep-river in the separate
interpreter its old river/pandas pins need.
"""
