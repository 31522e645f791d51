"""selfheal: self-healing for AI platforms.

The public face of the package is small: the CLI (`engine.cli:main`), the exception tree
(`engine.errors`) and the subpackages named in the README. Everything else is private.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("selfheal")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
