"""vdigui: a desktop disk manager for VirtualBox VDI images."""

__version__ = "0.1.0"
