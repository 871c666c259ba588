"""Teachers: any segmentation model, from wherever it comes (a nakt model file, TorchScript or ONNX with a
description, an MLflow model), loaded through one registry of teacher source kinds and run the same way:
resampling or sliding-window inference, flip test-time augmentation, autocast on GPU, softmax, checks on every
output.

Takes in: a teacher source (path or URI). Gives out: a :class:`~nakt_ray.teachers.inference.LoadedTeacher` whose
``predict`` maps preprocessed images ``[B, C_in, H, W]`` to probabilities ``[B, K, H, W]``. No Ray.

``description.py`` (what a teacher is: the description schema, inference options, the YAML reader),
``registry.py`` (``register_teacher_source``, ``load_teacher``, ``source_kind``), ``kinds/`` (one module per
source kind), ``inference.py`` (``LoadedTeacher``: prediction and output checks).
"""
