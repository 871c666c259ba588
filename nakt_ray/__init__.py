"""nakt-ray: network-agnostic knowledge transfer for medical image segmentation, distributed with Ray.

The modules follow the pipeline: ``sources`` / ``synthetic`` (data) -> ``preprocess`` -> ``zoo`` / ``checkpoint``
(models) -> ``teachers`` (train teachers) -> ``annotate`` (Ray Data actor pools) -> ``fusion`` -> ``annotations``
(Parquet) -> ``student`` (distil with Ray Train via ``training``) -> ``evaluate`` -> ``tracking`` (MLflow)
-> ``export`` (TorchScript, ONNX) / ``predict`` (masks and overlays for a folder).
"""
__version__ = "0.1.0"
