"""The optics of a SIM microscope: PSF, illumination patterns and the forward model.

- :mod:`.imaging`: Airy PSF, OTF cut-off, sinusoidal illumination, ``rec_k = block_mean(conv(e·l_k, psf))``
  (``forward_model``), FFT convolution;
- :mod:`.spectra`: Fourier-grid helpers (``freq_radius``, ``hann_window``, ``periodic_hann_window``).
"""
