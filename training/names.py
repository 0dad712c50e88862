"""Names the command line offers, importable without torch or scipy (the serving image)."""

KINDS = ("pop", "itemknn", "ease", "edlae", "dae", "cdae", "cddae")
NEURAL = ("dae", "cdae", "cddae")
PRESETS = ("default", "paper", "untuned")
PROTOCOLS = ("random", "temporal", "leave-one-out")
