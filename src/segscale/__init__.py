"""segscale: score a whole customer base on Spark and publish the answers as versioned Delta tables."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segscale")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
