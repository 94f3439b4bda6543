"""The package version (one place; innerprobe.__version__ and result provenance read it)."""

__version__ = "0.1.0"
