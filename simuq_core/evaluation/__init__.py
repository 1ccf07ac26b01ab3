"""Numbers that say how good a reconstruction and its uncertainty are.

- :mod:`.metrics`: scalar calibration metrics (ZMS, coverage, ENCE, AUSE, NLL, σ-scaling …);
- :mod:`.calibration_curves`: calibration curves, sparsification and the PIT histogram;
- :mod:`.calibration_inputs`: input handling (masks, validation, equal-count bins) shared by both;
- :mod:`.synthetic`: a model on a simulated split with known truth (``evaluate``, ``affine_align``);
- :mod:`.quality`: image quality side by side (registration, PSNR, SSIM, spectral correlation);
- :mod:`.resolution`: FRC and decorrelation resolution;
- :mod:`.sim_band`: the SIM passband and band-limiting (``SimBand``);
- :mod:`.quality_summary`: per-method quality tables (JSON and Markdown);
- :mod:`.gtfree`: checks without ground truth (classical noise, grid artefacts, field metrics).
"""
