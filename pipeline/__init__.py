"""Multi-task learning pipeline for e-commerce funnels.

Importing this package does nothing: no I/O, no logging setup, no heavy imports.
"""

__version__ = "0.1.0"
