"""Search: Ray Tune over student architectures, fusion rules and weights, and training settings; each trial is
the student training of :mod:`nakt_ray.training.student`, the champion registered in MLflow.

Takes in: a run config with ``tune.space`` and an annotation set. Gives out: ``<run_dir>/tune/``, a parent MLflow
run with a child per trial, ``results.{md,csv,png}`` and the registered champion.

Modules: ``tune`` (``tune_student``: the Tuner, its scheduler and searcher, resume, the champion), ``trials`` (one
trial: ``train_student`` with the trial's config, its epochs reported to Tune), ``epoch_queue`` (the Ray Train
callback that carries the epochs), ``report`` (the results table and plot). The language of ``tune.space`` is the
config's: ``nakt_ray/config/space.py``.
"""
