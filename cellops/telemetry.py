"""Switch off the usage telemetry of every tool in the stack (called by every entry point)."""

import os

TELEMETRY_OFF: dict[str, str] = {
    "ZENML_ANALYTICS_OPT_IN": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
}


def disable_telemetry() -> None:
    """Set the opt-out variables unless the user set them already."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
