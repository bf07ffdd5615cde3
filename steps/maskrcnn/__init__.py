"""ZenML steps of the Mask R-CNN family, mirroring :mod:`cellops.maskrcnn`: data, validation, train, register,
runtime."""
