"""Caterpillar front-ends: ``cat-quantize``, ``cat-generate``, ``cat-bench``, ``cat-eval``.

Each command is a module with ``main(argv=None) -> exit code`` (the console entry point), ``build()``
(its argument parser) and ``run(args)``. No algorithm lives here: see cat-core.
"""

__version__ = "0.3.0"
