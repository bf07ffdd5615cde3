"""Deterministic generators of synthetic datasets with exact ground truth."""

from cellops.synthetic.em import EMVolume, generate_em_volume, write_lucchi_dataset

__all__ = ["EMVolume", "generate_em_volume", "write_lucchi_dataset"]
