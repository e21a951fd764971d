"""The command-line rule the tests check everywhere: bad input is one line on stderr and exit status 2."""


def exit_status(main, argv) -> int:
    """What the shell would see: ``main(argv)``'s return value, or the code of argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def assert_one_line_error(capsys, main, argv, message: str = "", nothing_printed: bool = False,
                          program: str = "") -> str:
    """``main(argv)`` exits 2 with one line on stderr containing ``message`` and no traceback
    (with ``nothing_printed``, nothing on stdout: it stopped before any work; with ``program``,
    the line starts "``program``: error: "). Returns that line."""
    assert exit_status(main, argv) == 2
    captured = capsys.readouterr()
    if nothing_printed:
        assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err and message in captured.err
    assert captured.err.startswith(f"{program}: error: " if program else ""), captured.err
    return captured.err.strip()
