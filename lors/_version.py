"""The package version (one place: lors.__version__, saved folders' records)."""
__version__ = "0.2.0"
