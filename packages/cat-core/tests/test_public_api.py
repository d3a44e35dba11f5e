import importlib

import pytest

import cat_core


@pytest.mark.parametrize("name", sorted(cat_core._EXPORTS))
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(cat_core, name)
    module = importlib.import_module(cat_core._EXPORTS[name])
    assert value is getattr(module, name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        cat_core.no_such_thing  # noqa: B018
