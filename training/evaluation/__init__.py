"""Measuring: ranking metrics at N = 1..10, their tables, and a holdout scored through an
exported bundle exactly as the service scores it (the retraining gate).

May import `training.data` and the service contract and model (`service.serving.onnx_model`).
"""
