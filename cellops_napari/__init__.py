"""cellops in napari: the "cellops review" dock widget, which walks a review set (:mod:`cellops.review`) image by
image, most uncertain first, and saves each correction with who made it and when.

napari finds the widget through the npe2 manifest ``napari.yaml`` (entry point ``napari.manifest`` in
``pyproject.toml``): *Plugins > cellops review*, or ``napari -w cellops``. The package is a GUI adapter only:
reading the set, checking a correction and writing it are :class:`cellops.review.ReviewSet`'s.
"""
