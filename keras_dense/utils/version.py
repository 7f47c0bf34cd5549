"""The package version (also in setup.cfg)."""

__version__ = "0.1.0"
