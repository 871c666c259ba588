"""Evaluation: teachers, their ensemble and students scored on a labeled set at each image's original size,
with bootstrap confidence intervals.

Takes in: a run config, named model sources and a labeled folder. Gives out: ``evaluation.{md,json}`` and a
per-case CSV.
"""
