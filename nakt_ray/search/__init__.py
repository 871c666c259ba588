"""Search: Ray Tune over student architectures, fusion rules and weights, and training settings; each trial is
the student training of :mod:`nakt_ray.training.student`, the champion registered in MLflow.

Takes in: a run config with ``tune.space`` and an annotation set. Gives out: ``<run_dir>/tune/``, a parent MLflow
run with a child per trial, ``results.{md,csv,png}`` and the registered champion.
"""
