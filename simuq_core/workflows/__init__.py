"""The runs that DVC stages call, end to end.

- :mod:`.train`: ``run_training`` (data, model, objective, engine, saved model, test metrics);
- :mod:`.finetune`: ``run_finetuning`` (self-supervised fine-tuning on a lab's raw files, validated
  without ground truth, with its OOD reference).
"""
