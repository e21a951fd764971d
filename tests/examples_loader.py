"""Load a script of examples/ (or benchmarks/) as a module, so its tests can call its main() in-process;
or run one with its output reader gone, or with a Ctrl-C while it loads NumPy."""
import importlib.util
import os
import subprocess
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


def run_with_its_reader_gone(argv, **kwargs) -> subprocess.CompletedProcess:
    """``python argv`` with standard output a pipe whose reader has left (``script | head -1`` once
    ``head`` has its line): every write to it fails with a broken pipe. ``kwargs`` go to subprocess.run."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, *argv], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=600, **kwargs)
    finally:
        os.close(write_end)


def run_interrupted_while_loading_numpy(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python script --help`` with a Ctrl-C while it imports NumPy (a script's first tenths of a
    second). A NumPy of our own, first on the path, sends the SIGINT at that moment, so the test
    does not race; if no Ctrl-C arrives it fails. POSIX only (it uses os.kill)."""
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(60.0)\n"
        "raise AssertionError('no Ctrl-C arrived')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    return subprocess.run([sys.executable, str(script), "--help"], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
