"""The package version: the package face re-exports it and training records it in training_config.json."""

__version__ = "0.1.0"
