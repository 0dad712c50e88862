"""Studies that fit many models and compare them: the paper's experiments and their report,
equal-budget tuning, the user-disjoint new-users protocol, the item-disjoint new-items protocol
and the similar-items measure. Nothing in the jobs imports them.

May import every other room of `training`, never `training.cli`.
"""
