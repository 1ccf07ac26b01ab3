"""DVC stage ``train_selfsup``: self-supervised training (NLL of the raw frames under the
propagated Var(rec)); ground truth is used only for validation metrics.

    python -m stages.train_selfsup [--params params.yaml] [--data data/sim] [--out models/selfsup]
"""

from stages._train import main

if __name__ == "__main__":
    main("selfsup")
