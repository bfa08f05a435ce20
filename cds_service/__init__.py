"""CDS Hooks service: rules as data, on-premises LLM reasoning, tamper-evident decision log."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cds-service")
except PackageNotFoundError:  # running from a checkout without an install
    __version__ = "0.0.0+local"

__all__ = ["__version__", "create_app"]


def create_app(config=None):
    from .protocol.app import create_app as _create_app

    return _create_app(config)
