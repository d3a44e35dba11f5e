"""Caterpillar front-ends (cat-quantize, cat-generate, cat-bench, cat-eval).

The command-line tools land with their own issue; this package already installs and imports so
that the dependency chain apps -> core -> kernels is real from the start.
"""

__version__ = "0.1.0"
