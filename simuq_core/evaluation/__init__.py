"""Numbers that say how good a reconstruction and its uncertainty are.

- :mod:`.metrics`: calibration metrics (ZMS, coverage, calibration curves, sparsification …);
- :mod:`.synthetic`: a model on a simulated split with known truth (``evaluate``, ``affine_align``);
- :mod:`.quality`: image quality side by side (PSNR, SSIM, FRC, decorrelation resolution, SIM band);
- :mod:`.gtfree`: checks without ground truth (classical noise, grid artefacts, field metrics).
"""
