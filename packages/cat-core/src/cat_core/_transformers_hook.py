"""Registers the ``"caterpillar"`` quantization method with transformers once transformers loads
its quantizer registry, so that ``import cat_core`` stays cheap (that registry pulls in most of
transformers: seconds) and ``AutoModelForCausalLM.from_pretrained(native_dir)`` works whichever
of the two was imported first.

The registration itself goes through transformers' public ``register_quantization_config`` /
``register_quantizer`` (see :mod:`cat_core.io._transformers`); this module only decides when. A
failure never breaks the import of transformers: it becomes a warning, and
``cat_core.io.load_quantized`` still loads the checkpoint.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

_REGISTRY = "transformers.quantizers.auto"


def install() -> None:
    """Register now if transformers' registry is loaded, else right after it loads."""
    if sys.modules.get(_REGISTRY) is not None:
        _register()
    elif not any(isinstance(f, _RegistryFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryFinder())


def _register() -> None:
    try:
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            return  # the quantizer follows transformers 5's loading; 4 loads via load_quantized
        from cat_core.io._transformers import register

        register()
    except Exception as e:  # never break `import transformers`
        warnings.warn(f"cat_core: could not register the 'caterpillar' quantization method with transformers "
                      f"({type(e).__name__}: {e}); use cat_core.io.load_quantized", stacklevel=2)


class _RegistryFinder(importlib.abc.MetaPathFinder):
    """Finds transformers' registry like the normal finders do and runs :func:`_register` after
    the module has executed."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != _REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot, and no recursion into ourselves below
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisterAfter(spec.loader)
        return spec


class _RegisterAfter(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename... as the real loader
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its real loader (inspect, importlib.reload)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register()
