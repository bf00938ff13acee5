"""The client's version, in a module of its own so that any module may import it
without importing the package's ``__init__`` (and its imports) first."""

__version__ = "0.1.0"
