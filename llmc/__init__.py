"""llmc: an ahead-of-time compiler for transformer language models."""

__version__ = "0.1.0"
