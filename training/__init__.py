"""The offline side: data, models, evaluation, the jobs that fit and ship them, experiments.

Rooms, each importing only the ones below it (and `service`'s, which never import these):
- `training.cli`          the `cddae` command (imports its rooms lazily: `serve` needs no torch).
- `training.experiments`  studies that fit many models: the paper suite, tuning, new users.
- `training.jobs`         train → checkpoint → export → bundle; the retraining job.
- `training.models`       the autoencoders, the baselines, their options and tuned defaults.
- `training.evaluation`   ranking metrics, tables, a holdout scored through a bundle.
- `training.data`         fetch, loaders per layout, implicit feedback, splits, prepared splits.
- `training.names`        the names the command line offers (no torch, no scipy).
"""
