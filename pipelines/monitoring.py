"""Monitoring: the services' request logs against a registered model version's out-of-distribution reference, as a
drift report (HTML artifact in the dashboard, numbers as run metadata). Run with
``zenml pipeline run pipelines.monitoring.monitoring_pipeline -c configs/monitoring.yaml``.
"""

from zenml import pipeline

from steps.monitoring import load_request_logs, report_drift


@pipeline
def monitoring_pipeline() -> None:
    """request logs -> drift report against the model's reference."""
    report_drift(load_request_logs())
