import importlib


def test_imports_and_depends_on_core() -> None:
    apps = importlib.import_module("cat_apps")
    core = importlib.import_module("cat_core")
    assert apps.__version__ == "0.1.0"
    assert core.__version__
