"""DVC stage ``train_sup``: supervised training (NLL of emitter and light pattern against GT).

    python -m stages.train_sup [--params params.yaml] [--data data/sim] [--out models/sup]
"""

from stages._train import main

if __name__ == "__main__":
    main("sup")
