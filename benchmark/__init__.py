"""gfbench: declarative datasets and evaluation suites for sparse and partial-capture 3D reconstruction."""

__version__ = "0.1.0"
