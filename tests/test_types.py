"""The public Python layer type-checks (mypy, against the hand-written kernel stubs)."""
from mypy import api


def test_package_type_checks():
    out, err, status = api.run(["-p", "fluxtree", "--ignore-missing-imports", "--no-incremental"])
    assert status == 0, out + err
    assert "no issues found" in out
