"""Training: one Ray Train loop (DDP, AMP on GPU, checkpoints, resume) used for teachers (on labeled sites) and
for students (distilled from an annotation set, optionally fine-tuned on a few labels).

Takes in: a run config and an annotation set or labeled folders. Gives out: model files, ``train_run.json``,
MLflow runs and the registered student.
"""
