"""Inference after training: a student exported to TorchScript / ONNX (with the description that makes it a
teacher source again, and a parity check), and ``nakt predict``: masks and overlays for a folder (images:
``predict.py``; volumes: NIfTI masks on the original grid and mid-slice montages, ``predict_volumes.py``). Plain
PyTorch in one process, no Ray.
"""
