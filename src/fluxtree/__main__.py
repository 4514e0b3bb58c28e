"""``python -m fluxtree``: the ``fluxtree`` command."""
from .cli import main

raise SystemExit(main())
