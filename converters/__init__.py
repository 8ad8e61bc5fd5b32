"""edge-convert: the host half. Keras model → verified int8 LiteRT bundle per device profile."""

__version__ = "0.1.0"
