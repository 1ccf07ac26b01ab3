"""simuq: physics-informed SIM reconstruction with calibrated uncertainty.

Subpackages, from the bottom layer up (a package imports only from those above it in this list):
``optics``, ``io`` / ``config`` / ``tracking`` (files, parameters, MLflow), ``pattern``,
``baselines``, ``simulation``, ``realdata``, ``uncertainty``, ``network``, ``evaluation``,
``training``, ``inference``, ``reports``, ``workflows``. ``docs/design.md`` describes the method.
"""
