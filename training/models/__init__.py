"""The models: the fit/score interface, DAE/CDAE/CDDAE and their training loop, the baselines
(popularity, item-kNN, EASE, EDLAE), the cold-item head, option dataclasses and the tuned
defaults.

May import `training.evaluation` (early stopping scores validation), `training.data` and the
service's contract modules (`service.item_path`: how the head is stored).
"""
