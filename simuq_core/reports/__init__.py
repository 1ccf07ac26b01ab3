"""Reports: figures, tables and summaries written for people.

- :mod:`.plots`: the figures' shared conventions and plot functions;
- :mod:`.debug`: uncertainty maps of a few samples (TIFFs, NPZ, figures);
- :mod:`.calibration`: the calibration report of a model on a simulated split;
- :mod:`.synthetic`: the ``export_debug`` and ``calibrate`` drivers;
- :mod:`.epistemic`: aleatoric / epistemic / total calibration and the OOD ROC;
- :mod:`.comparison`: the classical baseline and the side-by-side comparison;
- :mod:`.real`: the real-data walkthrough figure.
"""
