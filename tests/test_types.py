"""The public Python layer type-checks (mypy, against the hand-written kernel stubs)."""
from pathlib import Path

from mypy import api

import fluxtree


def test_package_type_checks():
    package = Path(fluxtree.__file__).parent
    out, err, status = api.run([str(package), "--ignore-missing-imports", "--no-incremental",
                                "--exclude", r"/(cuda)/"])
    assert status == 0, out + err
