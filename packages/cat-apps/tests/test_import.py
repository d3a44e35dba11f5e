import importlib


def test_imports_and_depends_on_core() -> None:
    apps = importlib.import_module("cat_apps")
    core = importlib.import_module("cat_core")
    from importlib.metadata import requires, version

    # the module's version is the installed distribution's, and the installed cat-core is one
    # that cat-apps declares it works with
    assert apps.__version__ == version("cat-apps")
    assert core.__version__ == version("cat-core")
    pin = next(r for r in requires("cat-apps") if r.startswith("cat-core"))
    low = pin.split(">=")[1].split(",")[0]
    assert tuple(map(int, core.__version__.split("."))) >= tuple(map(int, low.split(".")))
