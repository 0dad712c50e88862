"""The production path: the train pipeline (fit, evaluate, fit on all data), checkpoints, ONNX
export into a versioned bundle, and the retraining job that cron runs.

May import `training.models`, `training.evaluation`, `training.data` and `service` (the bundle,
the interaction store it folds events from).
"""
