"""Experiments: CI-grid sweeps and memorization-regime studies (grid, sharding, cells, results I/O), the named
training methods they compare, the matched-quality frontier, and their statistics (:mod:`.statistics`).

Each cell of an experiment is one ordinary training job (:func:`diffusers_memctl.runner.run_training_job`); the
finished cells' rows are analysed here and rendered by :mod:`diffusers_memctl.reports`.
"""
