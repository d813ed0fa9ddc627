"""The release of asynctask, in one place (the package and its metadata read it here)."""

__version__ = "0.3.0.dev0"
