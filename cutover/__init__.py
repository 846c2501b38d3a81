"""cutover: move a live PostgreSQL database to another server with seconds of write pause."""

__version__ = "0.1.0"
