"""``python -m tinylatent`` runs the command line (see :mod:`tinylatent.cli`)."""
from tinylatent.cli import main

raise SystemExit(main())
