"""Torch architectures used by cellops. No ZenML, MLflow or BentoML here."""
