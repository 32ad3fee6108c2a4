"""The installed keras_gmlp version: one place, read by setup.cfg and recorded in exports."""

__version__ = "0.1.0"
