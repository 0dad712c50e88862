"""Data in: fetch, loaders per layout (GroupLens, RecBole, CSV), implicit feedback and id maps,
the splits of SPEC §2, and `prepared` (load → split, what every fit starts from).

May import `training.names` and the service contract (`service.features`) only.
"""
