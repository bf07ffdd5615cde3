"""ZenML steps of the U-Net family, mirroring :mod:`cellops.unet`: data, validation, train, register, runtime."""
