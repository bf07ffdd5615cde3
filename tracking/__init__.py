"""Plain MLflow and ZenML helpers shared by the steps, the deployment and the CLI: tag names (:mod:`tags`),
run set-up (:mod:`runs`), registry and promotion (:mod:`registry`). No domain logic lives here."""
