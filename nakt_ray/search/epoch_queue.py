"""A Ray Train callback that hands every epoch's metrics to a Tune trial through a Ray queue
(``nakt_ray/search/trials.py``).

Ray's ``TuneReportCallback`` does the same through the Tune session's own queue, but Tune's polling thread drains
that one and can see the trial function return before it picks up the last epoch (measured: the last epoch of a
local-mode trial was lost when its training task returned right after reporting it). With this queue the trial
function itself drains every epoch, in order, before it returns. Its own module, imported by the trial function
only (in the trial's process), so that importing the search does not import Ray Train.
"""
from __future__ import annotations

from typing import Any

from ray.train import UserCallback


class EpochQueue(UserCallback):
    """Puts ``(trial_id, rank 0's metrics)`` of every ``ray.train.report`` on ``queue`` (a ``ray.util.queue.Queue``
    a trial process reuses for its successive trials, hence the id)."""

    def __init__(self, queue: Any, trial_id: str) -> None:
        self.queue = queue
        self.trial_id = trial_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put((self.trial_id, dict(metrics[0])))
