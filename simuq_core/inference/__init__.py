"""Prediction on images of any size: tiling, image context, ensembles, files in and out.

- :mod:`.tiling`: tile grid, window weights and blending (``Blender``);
- :mod:`.context`: the image-level GroupNorm / PSF context that tiles share;
- :mod:`.ensemble`: MC-dropout passes and deep ensembles;
- :mod:`.files`: ``TiledPredictor`` and ``predict_files`` (read, pattern, Wiener input, network,
  OOD check, write).
"""
