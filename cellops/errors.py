"""The errors of unusable input that every layer raises and every service maps to an HTTP status (a module of its
own, imported by both :mod:`cellops.io` and :mod:`cellops.intensity`)."""


class ImageInputError(ValueError):
    """An image that cannot be used: unreadable, empty, of the wrong shape, size or dtype."""


class ImageTooLargeError(ImageInputError):
    """An image with more pixels than the caller accepts (a service answers 413 to it)."""
