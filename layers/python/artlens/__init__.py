"""ArtLens runtime library: shared by the Lambda handlers, the local stack and training.

Serving imports only what is in requirements/runtime.txt; nothing here imports TensorFlow.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
