"""refdiff: a reference implementation of diffusion models at the array level (NumPy / CuPy)."""

__version__ = "0.1.0"
