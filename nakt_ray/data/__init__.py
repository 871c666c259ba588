"""Data: transferal, labeled and test cases from folders (PNG, JPEG, TIFF, BMP, DICOM, NIfTI) -> preprocessed
arrays ``[C, H, W]`` with the geometry that maps them back, and Ray Datasets of decoded cases.

Takes in: a folder (``images/`` + optional ``masks/``) and a :class:`~nakt_ray.config.PreprocessConfig`. Gives out:
:class:`~nakt_ray.data.readers.Case` lists, decoded batches (``image``, ``target``, ``geometry``, ``error``) and
augmentations. Knows no model and no trainer.

Volumes: ``volumes`` reads and writes NIfTI, NRRD, MetaImage and DICOM series as ``[D, H, W]`` arrays with their
:class:`~nakt_ray.data.volumes.VolumeGeometry` (spacing, origin, direction; LPS); ``volume_preprocess`` holds their
preprocessing (orientation, spacing, modality normalisation, crop) and its exact inverse onto the original grid.
"""
