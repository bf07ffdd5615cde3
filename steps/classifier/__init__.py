"""ZenML steps of the classifier family, mirroring :mod:`cellops.classifier`: data, validation, train, register,
runtime."""
