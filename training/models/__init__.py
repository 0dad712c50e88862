"""The models: the fit/score interface, DAE/CDAE/CDDAE and their training loop, the baselines
(popularity, item-kNN, EASE, EDLAE), option dataclasses and the tuned defaults.

May import `training.evaluation` (early stopping scores validation) and `training.data`.
"""
