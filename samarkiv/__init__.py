"""samarkiv: a regional vendor-neutral archive for medical images and clinical media."""

__version__ = "0.1.0"
