"""Synthetic SIM data with known truth.

- :mod:`.samples`: one sample (emitter, pattern, PSF, camera noise with its exact σ), ``simulate_sample``;
- :mod:`.dataset`: the dataset on disk (``write_dataset``, ``load_split``);
- :mod:`.ood`: out-of-distribution test splits (the simulator shifted on one axis at a time).
"""
