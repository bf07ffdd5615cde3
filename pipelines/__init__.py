"""ZenML pipelines: they only wire steps; every tunable comes from configs/<task>.yaml."""

from cellops.telemetry import disable_telemetry

disable_telemetry()
