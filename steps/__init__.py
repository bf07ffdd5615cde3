"""ZenML steps: thin adapters that read typed inputs, call cellops/ or models/, log and return outputs."""

from cellops.telemetry import disable_telemetry

disable_telemetry()
