"""Teacher source kinds: one module per form a teacher comes in, each turning a source (a path or a URI) into a
:class:`~nakt_ray.teachers.inference.RawTeacher` (a forward function and its description).

Takes in: a source string and a device. Gives out: a ``RawTeacher``, or a ``TeacherLoadError`` naming the teacher
and the source. The registry (``nakt_ray/teachers/registry.py``) asks each kind in turn whether a source is its
own and loads it with the first that says yes.

The kinds, in the order the registry asks them:

- ``mlflow_model`` (``mlflow``): ``models:/name@alias``, ``models:/name/3``, ``models:/name/latest``,
  ``runs:/<id>/model``; described by the ``nakt.*`` MLflow tags, else by the signature and a probe.
- ``onnx``: ``model.onnx`` with ``model.onnx.yaml`` beside it.
- ``torchscript``: ``model.ts`` / ``.torchscript`` / a TorchScript ``.pt``, with ``model.ts.yaml`` beside it.
- ``remote`` (``remote.py``, with ``remote_http.py``, ``remote_oip.py``, ``remote_mlflow.py``): a teacher YAML
  with ``url:``, an inference endpoint (Open Inference Protocol v2 or MLflow's scoring server); weights never
  leave their owner.
- ``nnunet``: an nnU-Net v2 results folder (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``), its
  dataset folder, or a teacher YAML with ``nnunet:`` (folds, checkpoint, spacing); run whole-image through nnU-Net's
  own predictor (needs ``nakt-ray[nnunet]``).
- ``described_yaml`` (``teacher_yaml``): a ``teacher.yaml`` whose ``file:`` names a TorchScript or ONNX file;
  the teacher is recorded as the kind of that file.
- ``monai_bundle`` (with ``monai_bundle_config.py``): a MONAI bundle folder or ``.zip`` (``configs/``,
  ``models/model.pt`` or ``model.ts``), loaded through ``monai.bundle``, labels from its metadata.
- ``nakt_file`` (``nakt``): a nakt model file ``model.pt``, which describes itself; asked last, for any other
  existing file.

Adding a kind (e.g. an nnU-Net results folder):

1. Write ``kinds/<kind>.py`` with ``KIND`` (its name in manifests, e.g. ``"nnunet"``), ``EXPECTS`` (one line
   saying what a source of this kind looks like; the registry lists it when no kind accepts a source),
   ``detect(source: str) -> bool`` (cheap: look at the string, a suffix, a folder's entries; never load the
   model) and ``load(name: str, source: str, device: torch.device) -> RawTeacher`` (raise
   ``error(TeacherLoadError, teacher_where(name, source), message)`` on any problem; describe the model with a
   ``TeacherDescription``; identify its weights with ``nakt_ray.models.model_file.fingerprint``).
2. Add one ``register_teacher_source`` line for it in ``_register_built_in_kinds`` in
   ``nakt_ray/teachers/registry.py``; the order of those lines is the order the kinds are asked.
3. Add a test that loads a tiny model of the kind and compares its ``predict`` with the original model.

The kind modules do not import the registry (the registry imports them), so nothing here imports in a circle. Each
imports its runtime (onnxruntime, mlflow) inside ``load``, so asking ``detect`` costs nothing.
"""
