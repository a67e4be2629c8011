"""segate: a storage-element gateway for the grid's move from X509 + VOMS to tokens."""

__version__ = "0.1.0"
