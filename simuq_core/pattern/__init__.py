"""The structured-illumination pattern: where it is estimated and how it becomes a light pattern.

- :mod:`.estimate`: ``PatternEstimate`` (wave vector, phase, band match per angle: the one
  estimate type), ``estimate_pattern`` (classical, within a known period range, JAX, batched),
  ``shift_pattern_origin``, ``PATTERN_KEYS``;
- :mod:`.blind`: ``estimate_pattern_blind`` (full-band search for real acquisitions, with a
  detection z) and ``diagnose_pattern`` (angle-major vs phase-major reading);
- :mod:`.maps`: ``pattern_maps`` and ``pattern_variance``, the light pattern and its variance;
- :mod:`.frame_order`: a quick frame-order check from the raw frames alone.
"""
