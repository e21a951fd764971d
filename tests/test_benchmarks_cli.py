"""The benchmarks' command lines: bad options are one line and exit status 2, the --json path is checked
before the run, a closed output pipe stops nothing, a Ctrl-C while one loads is one line and exit status 130,
and the BLAS thread count is read one way for all of them."""
import json
import os
import sys

import pytest

import one_line_errors
from examples_loader import ROOT, load_example, run_interrupted_while_loading_numpy, run_with_its_reader_gone


@pytest.fixture(scope="module")
def bench_oracle():
    return load_example("bench_oracle", folder="benchmarks")


@pytest.fixture(scope="module")
def bench_train():
    return load_example("bench_train", folder="benchmarks")


def assert_one_line_error(capsys, main, argv, message: str) -> None:
    one_line_errors.assert_one_line_error(capsys, main, argv, message, nothing_printed=True)


@pytest.mark.parametrize("argv, message", [
    (["--eta", "nan"], "--eta: must be a finite number ≥ 0"),
    (["--eta", "-0.1"], "--eta: must be a finite number ≥ 0"),
    (["--seed", "-1"], "--seed: must be an integer in 0.."),
    (["--sequences", "0"], "--sequences: must be an integer in 1.."),
    (["--sequences", "1000000", "--length", "1000"], "at most 20,000,000 letters"),
    (["--no-such-option"], "unrecognized arguments"),
    (["--force"], "give it with --json PATH"),
    (["--json", ""], "--json: must be a file or folder path; got an empty string"),
])
def test_bench_oracle_bad_options_are_one_line(bench_oracle, capsys, argv, message):
    assert_one_line_error(capsys, bench_oracle.main, argv, message)


@pytest.mark.parametrize("argv, message", [
    (["--threads", "-3"], "--threads: must be an integer in 1..1,024; got -3"),
    (["--steps", "0"], "--steps: must be an integer in 1.."),
    (["--configs", "huge"], "--configs takes a comma-separated list"),
])
def test_bench_train_bad_options_are_one_line(bench_train, capsys, argv, message):
    assert_one_line_error(capsys, bench_train.main, argv, message)


def test_the_json_path_is_checked_before_the_run(bench_oracle, bench_train, tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text("mine")
    for main in (bench_oracle.main, bench_train.main):
        assert_one_line_error(capsys, main, ["--json", str(mine)], "exists; pass --force")
        assert_one_line_error(capsys, main, ["--json", str(mine / "x.json")], "is a file, not a folder")
    assert mine.read_text() == "mine"
    assert bench_oracle.main(["--sequences", "4", "--length", "4", "--repeats", "1", "--json", str(mine),
                              "--force"]) == 0
    figures = json.loads(mine.read_text())
    assert figures["sequences"] == 4 and figures["threads"] == bench_oracle._bench.blas_threads()


@pytest.mark.parametrize("script, argv", [
    ("bench_generate", ["--config", "small", "--contexts", "8", "--new-tokens", "1", "--repeats", "1"]),
    ("bench_train", ["--configs", "small", "--steps", "1", "--warmup", "0"]),
])
def test_a_closed_output_pipe_stops_nothing(script, argv, tmp_path):
    """`bench_*.py | head -1`: once the reader has gone the printing is dropped; the run goes on, the
    --json file is written, exit 0 and nothing on stderr (tinylatent's own commands do the same)."""
    result = run_with_its_reader_gone([str(ROOT / "benchmarks" / f"{script}.py"), *argv,
                                       "--json", str(tmp_path / "figures.json")])
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads((tmp_path / "figures.json").read_text())


@pytest.mark.skipif(__import__("tinylatent.backend").backend.gpu_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("script", ["bench_oracle", "bench_train", "bench_generate"])
def test_a_missing_gpu_is_one_line_and_exit_2(script, capsys):
    module = load_example(script, folder="benchmarks")
    one_line_errors.assert_one_line_error(capsys, module.main, ["--device", "gpu"], "device 'gpu' needs CuPy",
                                          nothing_printed=True, program=module.PROGRAM)


@pytest.mark.skipif(os.name != "posix", reason="sends itself SIGINT with os.kill (POSIX)")
@pytest.mark.parametrize("script", ["bench_oracle", "bench_train", "bench_generate"])
def test_ctrl_c_while_a_benchmark_loads_is_one_line_and_exit_130(script, tmp_path):
    """As for the examples: ``_bench`` is imported before NumPy. Before, this printed the traceback
    of NumPy's import."""
    result = run_interrupted_while_loading_numpy(ROOT / "benchmarks" / f"{script}.py", tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", f"{script}.py: interrupted\n")


def test_blas_threads_reads_openblas_before_omp_without_threadpoolctl(bench_oracle, monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)   # `import threadpoolctl` now fails
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert bench_oracle._bench.blas_threads() == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert bench_oracle._bench.blas_threads() == "1"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    assert bench_oracle._bench.blas_threads() == "4"


@pytest.mark.parametrize("seconds_by_size, expected", [
    ({2048: 0.1}, 2048),                                   # the CPU: one 2048³ product is long enough
    ({2048: 3e-4, 4096: 2.4e-3, 8192: 0.019}, 8192),       # an H100: doubled until one takes 10 ms
    ({2048: 1e-3, 4096: 0.011}, 4096),
    ({2048: 1e-5, 4096: 1e-5, 8192: 1e-5}, 8192),          # never long enough: capped at LARGEST_PEAK_SIZE
])
def test_the_matmul_peak_grows_its_product_until_one_takes_ten_milliseconds(bench_train, monkeypatch,
                                                                             seconds_by_size, expected):
    built = []

    def multiply(n):
        built.append(n)
        return lambda: n

    monkeypatch.setattr(bench_train, "seconds_of", lambda run, sync: seconds_by_size[run()])
    assert bench_train.peak_size(multiply, sync=lambda: None) == expected
    assert built == [n for n in (2048, 4096) if n <= expected]  # each size below the cap is timed once
