"""Tasks for the Trainer: each supplies ``loss``, ``evaluate`` and ``collate_fn`` (classification, detection,
distillation). Import them from their modules (``lors.tasks.detection`` needs the ``detection`` extra)."""
