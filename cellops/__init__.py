"""cellops: reproducible analyses and deep models for cell imaging.

The core library: plain, typed functions on numpy arrays and torch tensors. Nothing in this package
imports ZenML, MLflow or BentoML, so every function can be tested and reused alone.
"""

__version__ = "0.1.0"
