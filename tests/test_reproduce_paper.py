"""examples/reproduce_paper.py, run in-process with ``--smoke``: its files, its JSON, reuse, and its errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples_loader import load_example, run_with_its_reader_gone
from one_line_errors import assert_one_line_error
from tinylatent.checkpoint import load_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reproduce_paper.py"
EXPERIMENT_NAMES = ["paper-eta0", "paper-eta0.02", "paper-eta0.03", "paper-eta0.04", "paper-eta0.06",
                    "mixture-eta0", "mixture-eta0.02", "mixture-eta0.04"]


@pytest.fixture(scope="module")
def reproduce():
    return load_example("reproduce_paper")


@pytest.fixture(scope="module")
def smoke(reproduce, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    argv = ["--smoke", "--out", str(out), "--jobs", "2"]
    assert reproduce.main(argv) == 0      # two worker processes
    # every file it wrote in --out is one that its check before the run knew of
    checked = {out / path for path in reproduce.outputs(reproduce.parse_args(argv))}
    written = {path for path in out.rglob("*") if path.is_file()}
    assert written - checked == {out / reproduce.common.MARKER_FILENAME}
    return json.loads((out / "results.json").read_text()), out


def test_smoke_writes_well_formed_results(smoke):
    report, out = smoke
    assert set(report) == {"settings", "paper", "experiments", "targets", "plots", "seconds"}
    assert report["settings"]["budget"] == "smoke" and report["settings"]["model_config"]["context_length"] == 48
    assert report["settings"]["jobs"] == 2
    assert report["paper"]["understanding_kl"] == {"0": 0.059, "0.03": 0.12, "0.06": 0.139}
    assert [e["name"] for e in report["experiments"]] == EXPERIMENT_NAMES
    for experiment in report["experiments"]:
        assert experiment["train"]["steps"] == 3 and not experiment["reused_checkpoint"]
        assert experiment["curve"]["step"] == [0, 1, 2, 3] and experiment["curve"]["bayes_val_loss"] > 0
        evaluation = experiment["evaluation"]
        assert set(evaluation["convergence"]) == {"model_cross_entropy", "bayes_cross_entropy",
                                                  "excess_cross_entropy", "paper_abs_log_ratio"}
        for condition in ("without_delimiter", "with_delimiter"):
            understanding = evaluation["understanding"][condition]
            assert [row["n_letters"] for row in understanding["rows"]] == [1, 2, 3, 4, 5, 6]
            assert set(understanding["mean_over_lengths"]) == {"known_intention", "paper"}
        icl = evaluation["icl"]
        assert [row["m"] for row in icl["rows"]] == [0, 1, 2]                 # 48 tokens hold a delimiter, 2 examples, a query
        assert [skipped["m"] for skipped in icl["skipped"]] == [3, 4, 5, 6, 7, 8]
        has_paper_target = experiment["family"] == "paper"
        assert all((row["paper"] is not None) == has_paper_target for row in icl["rows"])
        for row in icl["rows"]:
            split = row["known_intention"]
            assert set(split) == {"total", "ambiguity", "approximation"}
            assert split["total"]["mean"] == pytest.approx(split["ambiguity"]["mean"] + split["approximation"]["mean"])
    kinds = {check["what"] for check in report["targets"]}
    assert "excess cross-entropy over Bayes" in kinds and "largest approximation part, ICL" in kinds
    assert all(isinstance(check["met"], bool) for check in report["targets"])
    tables = (out / "results.md").read_text()
    for heading in ("## Convergence", "## Language understanding", "## In-context learning", "## Targets"):
        assert heading in tables
    assert all((out / "runs" / name / "ckpt.npz").exists() for name in EXPERIMENT_NAMES)


def test_short_windows_train_the_paper_language_models_only(smoke):
    _, out = smoke
    for name in EXPERIMENT_NAMES:
        train_config = load_checkpoint(out / "runs" / name / "ckpt.npz").train_config
        expected = 64 if name.startswith("paper") else 0        # a mixture draws one document per window
        assert (train_config["short_windows"], train_config["short_context"]) == (expected, 8), name


def test_a_second_run_reuses_the_checkpoints_and_writes_json_where_asked(reproduce, smoke, tmp_path, capsys, monkeypatch):
    first, out = smoke
    monkeypatch.setitem(sys.modules, "matplotlib", None)                     # as if matplotlib were not installed
    capsys.readouterr()
    assert reproduce.main(["--smoke", "--out", str(out), "--json", str(tmp_path / "numbers.json"), "--no-progress",
                           "--jobs", "1"]) == 0
    report = json.loads((tmp_path / "numbers.json").read_text())
    assert all(experiment["reused_checkpoint"] for experiment in report["experiments"])
    assert [e["evaluation"] for e in report["experiments"]] == [e["evaluation"] for e in first["experiments"]]
    assert report["plots"] == []
    printed = capsys.readouterr().out
    assert "plot skipped: matplotlib is not installed" in printed and "reused" not in printed   # --no-progress


def test_one_process_trains_the_same_models_as_two(reproduce, smoke, tmp_path):
    first, _ = smoke
    assert reproduce.main(["--smoke", "--out", str(tmp_path), "--jobs", "1", "--no-progress",
                           "--only", "paper-eta0.04", "mixture-eta0.02"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    by_name = {e["name"]: e for e in first["experiments"]}
    for experiment in report["experiments"]:
        assert experiment["curve"] == by_name[experiment["name"]]["curve"]
        assert experiment["evaluation"] == by_name[experiment["name"]]["evaluation"]


def test_a_run_folder_of_another_budget_is_refused(reproduce, smoke, capsys):
    _, out = smoke
    err = assert_one_line_error(capsys, reproduce.main, ["--quick", "--out", str(out)])
    assert "holds a different run" in err and "choose another --out" in err


def test_a_subset_of_the_experiments_with_its_own_steps(reproduce, tmp_path):
    assert reproduce.main(["--smoke", "--only", "mixture-eta0.04", "--steps", "2", "--out", str(tmp_path),
                           "--no-progress"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert [e["name"] for e in report["experiments"]] == ["mixture-eta0.04"]
    assert report["experiments"][0]["train"]["steps"] == 2 and report["settings"]["train_config"]["steps"] == 2


def test_the_tables_print_no_negative_zero(reproduce):
    """An exact reader's KL of 0 comes out of floating point as about −1e-17; the tables printed it
    as "-0.0000" (docs/results.md had 12). A value below −0.00005 keeps its sign."""
    assert reproduce._ci({"mean": -1e-17, "low": -3e-12, "high": -0.0}) == "0.0000 [0.0000, 0.0000]"
    assert reproduce._ci({"mean": -0.00016, "low": -0.00049, "high": 0.00004}) == "-0.0002 [-0.0005, 0.0000]"
    assert reproduce._ci({"mean": 0.12345, "low": 0.1, "high": 2.0}, digits=3) == "0.123 [0.100, 2.000]"


@pytest.mark.parametrize("arguments", [["--quick", "--smoke"], ["--seed", "-1"], ["--preset", "huge"], ["--bogus"],
                                       ["--seed", "x"], ["--steps", "0"], ["--only", "paper-eta0.5"],
                                       ["--jobs", "0"]])
def test_bad_options_are_one_line_and_exit_2(reproduce, arguments, capsys):
    assert_one_line_error(capsys, reproduce.main, arguments, program="reproduce_paper.py")


def test_an_existing_json_file_is_refused_before_any_training(reproduce, tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text("mine")
    assert_one_line_error(capsys, reproduce.main, ["--smoke", "--no-progress", "--out", str(tmp_path / "out"),
                                                   "--json", str(mine)], "exists; pass --force")
    assert mine.read_text() == "mine" and not (tmp_path / "out").exists()


def test_a_users_checkpoint_in_a_run_folder_is_refused_before_any_training(reproduce, tmp_path, capsys):
    mine = tmp_path / "runs" / "paper-eta0" / "ckpt.npz"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    err = assert_one_line_error(capsys, reproduce.main, ["--smoke", "--no-progress", "--only", "paper-eta0",
                                                         "--out", str(tmp_path)], f"{mine} exists", nothing_printed=True)
    assert "pass --force" in err and "choose another --out" in err
    assert mine.read_bytes() == b"mine" and [path.name for path in tmp_path.iterdir()] == ["runs"]


def test_a_closed_output_pipe_stops_nothing(tmp_path):
    """`reproduce_paper.py | head -1`, with two worker processes printing to the same pipe: the printing
    is dropped once the reader has gone; the tables and the JSON are still written, exit 0."""
    result = run_with_its_reader_gone([str(EXAMPLE), "--smoke", "--only", "paper-eta0", "mixture-eta0",
                                       "--jobs", "2", "--out", str(tmp_path)])
    assert (result.returncode, result.stderr) == (0, "")
    report = json.loads((tmp_path / "results.json").read_text())
    assert [e["name"] for e in report["experiments"]] == ["paper-eta0", "mixture-eta0"]
    assert (tmp_path / "results.md").exists()


def _interrupted(arguments: list, ready, to_the_group: bool, wait: float = 0.0, signum=signal.SIGINT) -> tuple:
    """Run the script with ``--smoke --steps 1000000 --jobs 1 --no-progress`` and ``arguments`` in a
    session of its own; once ``ready(pid)``, and ``wait`` seconds later, send SIGINT (or ``signum``)
    to its process group (as a terminal sends Ctrl-C) or to it alone. Returns (exit status, standard error)."""
    process = subprocess.Popen([sys.executable, str(EXAMPLE), "--smoke", "--steps", "1000000", "--jobs", "1",
                                "--no-progress", *arguments],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120.0
        while not ready(process.pid):
            assert process.poll() is None and time.monotonic() < deadline, "the script never got there"
            time.sleep(0.002)
        time.sleep(wait)
        if to_the_group:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, stderr


@pytest.mark.parametrize("to_the_group", [True, False], ids=["terminal", "kill"])
@pytest.mark.parametrize("signum, said, status", [(signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated", 143)],
                         ids=["sigint", "sigterm"])
def test_ctrl_c_saves_the_running_experiment_and_starts_no_other(tmp_path, to_the_group, signum, said, status):
    """SIGINT while the first of two experiments trains with ``--jobs 1``, to the process group
    (as a terminal sends Ctrl-C) or to the script alone (``kill -INT``, which it passes on to its
    worker): the experiment saves its checkpoint, the second never starts (the pool is handed an
    experiment only when a worker is free), and the script says so in one line and exits 130.
    Before, the second experiment started training, and ``kill -INT`` waited for the first to end.
    SIGTERM (``kill``, a scheduler) the same, with "terminated" and exit 143; before, it ended
    the script at once, and the worker's steps since its last checkpoint were lost."""
    log = tmp_path / "runs" / "paper-eta0" / "log.jsonl"
    returncode, stderr = _interrupted(["--only", "paper-eta0", "paper-eta0.02", "--out", str(tmp_path)],
                                      lambda pid: log.exists() and log.read_text().count("\n") >= 3,  # step 0 and 2 steps
                                      to_the_group, signum=signum)
    assert (returncode, stderr) == (status, f"reproduce_paper.py: {said}\n")
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["paper-eta0"]
    saved_step = load_checkpoint(log.parent / "ckpt.npz").step
    last_logged_step = json.loads(log.read_text().splitlines()[-1])["step"]
    assert 2 <= saved_step == last_logged_step < 1000000


def _has_a_worker(pid: int) -> bool:
    """Whether process ``pid`` has started a multiprocessing worker (Linux's /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return False
    for child in children:
        try:
            if "multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                return True
        except OSError:  # it has exited since
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children from Linux's /proc")
def test_ctrl_c_while_a_worker_loads_is_one_line_and_starts_nothing(tmp_path):
    """Ctrl-C just after the worker process starts, while it imports NumPy and the script:
    the worker started with SIGINT blocked, so it prints no traceback of its imports; it keeps
    the Ctrl-C, and starts no experiment."""
    returncode, stderr = _interrupted(["--only", "paper-eta0", "--out", str(tmp_path)], _has_a_worker, True,
                                      wait=0.02)  # the worker is loading (it takes tenths of a second)
    assert (returncode, stderr) == (130, "reproduce_paper.py: interrupted\n")
    assert not (tmp_path / "runs").exists()


def test_a_failed_experiment_stops_the_running_ones_and_is_reported_at_once(reproduce, tmp_path):
    """paper-eta0's folder holds a run of another seed, so that experiment fails at once; the other,
    training a million steps beside it, is stopped (a checkpoint, if it got that far) instead of
    being waited for, and the error is one line with exit status 2. Before, the script said
    nothing until the other experiment had finished."""
    assert reproduce.main(["--smoke", "--only", "paper-eta0", "--seed", "1", "--no-progress",
                           "--out", str(tmp_path)]) == 0
    result = subprocess.run([sys.executable, str(EXAMPLE), "--smoke", "--steps", "1000000", "--jobs", "2",
                             "--no-progress", "--only", "paper-eta0", "paper-eta0.02", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("reproduce_paper.py: error: ") and "holds a different run" in result.stderr
    assert result.stderr.count("\n") == 1
