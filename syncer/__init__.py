"""procore-photo-sync: a verified local mirror of Procore project photos."""

__version__ = "0.1.0"
