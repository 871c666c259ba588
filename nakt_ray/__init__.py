"""nakt-ray: network-agnostic knowledge transfer for medical image segmentation, distributed with Ray.

One sub-package per stage, in the order data flows (``docs/architecture.md`` has the diagram and the layers)::

    data -> teachers -> annotation (Ray Data actor pools) -> fusion -> Parquet annotation set
         -> training (Ray Train student) -> search (Ray Tune) -> evaluation -> inference (export, predict)

on shared foundations: ``zoo`` (architectures), ``models`` (model files), ``config``, ``runtime`` (Ray, storage),
``tracking`` (MLflow), ``metrics`` and ``losses`` (pure maths) and ``errors``. ``demo`` (synthetic data,
``nakt demo``) and ``cli`` sit on top.
"""
__version__ = "0.1.0"
