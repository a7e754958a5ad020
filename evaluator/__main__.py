"""``python -m iam_evaluator``: the ``iam-eval`` command."""
from iam_evaluator.cli import main

raise SystemExit(main())
