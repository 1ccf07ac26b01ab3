"""Training: the engine and what it minimises.

- :mod:`.engine`: ``Trainer`` (optax, mean-first phase, checkpoints, data parallel), ``BatchSource``;
- :mod:`.losses`: Gaussian likelihoods and reconstruction losses;
- :mod:`.objectives`: the self-supervised and the supervised objective.
"""
