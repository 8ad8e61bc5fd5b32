"""edge-runtime: the on-device half. Light by design: no TensorFlow, no Keras."""

__version__ = "0.1.0"
