"""Load a script of examples/ (or benchmarks/) as a module, so its tests can call its main() in-process."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str, folder: str = "examples"):
    """``<folder>/<name>.py`` (folder ``examples`` or ``benchmarks``) as a module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name while the class is built
    spec.loader.exec_module(module)
    return module
