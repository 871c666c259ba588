"""Inference after training: a student exported to TorchScript / ONNX (with the description that makes it a
teacher source again, and a parity check), and ``nakt predict``: masks and overlays for a folder. Plain PyTorch
in one process, no Ray.
"""
