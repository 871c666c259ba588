"""Teachers: any segmentation model, from wherever it comes (a nakt model file, TorchScript or ONNX with a
description, an MLflow model), loaded through one registry of teacher sources and run the same way: resampling
or sliding-window inference, flip test-time augmentation, autocast on GPU, softmax, checks on every output.

Takes in: a teacher source (path or URI). Gives out: a :class:`~nakt_ray.teachers.sources.LoadedTeacher` whose
``predict`` maps preprocessed images ``[B, C_in, H, W]`` to probabilities ``[B, K, H, W]``. No Ray.
"""
