"""The reconstruction network.

- :mod:`.simnet`: ``SIMNet`` (U-Net backbone, heads for emitter, light pattern, PSF, background
  and their log-variances), ``UNet``;
- :mod:`.forward`: ``build_model`` and ``predict`` (one forward pass with every mean and variance
  map, propagated through the forward model), ``estimate_patterns``;
- :mod:`.store`: ``save_model`` / ``load_model`` and the flat-array form of parameters.
"""
