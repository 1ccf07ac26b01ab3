"""The structured-illumination pattern: where it is estimated and how it becomes a light pattern.

- :mod:`.estimate`: ``PatternEstimate`` (wave vector, phase, modulation per frame), ``estimate_pattern``
  (classical, with a known period), ``estimate_pattern_blind`` (full-band search), ``diagnose_pattern``
  (frame order and detection check), the parametric pattern maps, ``PATTERN_KEYS``.
"""
