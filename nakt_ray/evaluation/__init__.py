"""Evaluation: teachers, their ensemble and students scored on a labeled set at each image's original size:
Dice, IoU, HD95 and NSD per class and as the mean over foreground classes, with seeded bootstrap confidence
intervals.

Takes in: a run config, named model sources and a labeled folder. Gives out: ``evaluation.{md,json}`` and a
per-case CSV (``evaluate.py`` runs the models through Ray Data; ``report.py`` turns the per-case scores into
figures and files, and holds the rule that an earlier evaluation is not replaced unasked). A 3D run scores volumes
on their original grids in mm (``volumes.py``) and draws a figure of mid-slices per model (``figures.py``).
"""
