"""The ``fluxtree`` command: fit end to end (in a subprocess too), summary, inspect, bench,
bad arguments and damaged files; the data sets, model specs and the PNG writer behind it."""
import importlib.util
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import fluxtree as ft
from fluxtree.cli import _data, _models, _png, build_parser, load_fitted, main

SMALL = ["--dataset", "iris", "--hidden", "4", "--max-iter", "15", "--no-progress"]
#: the folder holding the fluxtree package under test (src/ or site-packages)
PACKAGE_ROOT = str(Path(ft.__file__).resolve().parent.parent)


def run_cli(*args, cwd=None, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "fluxtree", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout, check=False)


def read_png(path):
    """Decode the PNGs ``encode_png`` writes (8-bit RGB, filter 0), checking every CRC."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + n
    w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color, interlace) == (8, 2, 0) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert np.all(raw[:, 0] == 0)
    return raw[:, 1:].reshape(h, w, 3)


# ----------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------
def test_fit_in_a_subprocess_writes_a_loadable_checkpoint_and_a_png(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("fit", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for needle in ("Dense(4 => 4, tanh)", "# Total:", "accuracy:     train", "time:",
                   "evaluations:  fun", "hessp", "checkpoint:", "loss curve:"):
        assert needle in text
    model, ckpt = load_fitted(str(out / "model.npz"))
    assert ckpt["spec"] == {"inputs": 4, "hidden": [4], "outputs": 3, "activation": "tanh",
                            "batchnorm": False}
    data = _data.load("iris")
    acc = np.mean(np.argmax(model(data.X_train), 1) == np.argmax(data.Y_train, 1))
    assert acc > 0.9
    assert f"{100 * acc:.2f} %" in text
    img = read_png(out / "loss.png")
    assert img.shape == (400, 640, 3) and len(np.unique(img.reshape(-1, 3), axis=0)) > 3


def test_fit_defaults_write_into_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *SMALL, "--method", "L-BFGS-B", "--format", "safetensors"]) == 0
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "loss.png").is_file()
    assert "L-BFGS-B" in capsys.readouterr().out


def test_fit_with_batchnorm_float32_and_target_loss(tmp_path, capsys):
    code = main(["fit", *SMALL, "--batchnorm", "--dtype", "float32", "--target-loss", "0.3",
                 "--curvature", "gauss-newton", "--method", "trust-ncg", "--out",
                 str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "BatchNorm(4, tanh)" in text and "callback" in text      # stopped at the target
    model, ckpt = load_fitted(str(tmp_path / "model.npz"))
    assert model[0].weight.dtype == np.float32 and ckpt["fit"]["loss"] <= 0.3
    assert np.any(model[1].running_mean != 0)                          # statistics were kept


def test_fit_progress_goes_to_stderr(tmp_path, capsys):
    assert main(["fit", "--dataset", "iris", "--hidden", "4", "--max-iter", "10", "--out",
                 str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "trust-krylov [" in err and "loss" in err


def test_summary_from_options_and_from_a_checkpoint(tmp_path, capsys):
    assert main(["summary", "--hidden", "64,64"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[:4] == [
        "Chain(",
        "  Dense(64 => 64, tanh),                # 4_160 parameters",
        "  Dense(64 => 64, tanh),                # 4_160 parameters",
        "  Dense(64 => 10),                      # 650 parameters",
    ]
    assert main(["fit", *SMALL, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "model.npz")]) == 0
    text = capsys.readouterr().out
    assert "iris, fitted with trust-krylov" in text and "Dense(4 => 3)" in text


def test_inspect_lists_arrays_and_values(tmp_path, capsys):
    path = tmp_path / "m.npz"
    ft.save(str(path), {"model": ft.Chain(ft.Dense(2, 3)), "step": 7})
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "2 arrays, 9 numbers" in text
    assert '["model"]["layers"][0]["weight"]  float32   (3, 2)' in text
    assert 'total: 9 float32' in text and '["step"] = 7' in text


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["train"], "invalid choice: 'train'"),
    (["fit", "--hidden", "64,x"], "hidden sizes must be positive integers"),
    (["fit", "--hidden", "0"], "hidden sizes must be positive integers"),
    (["fit", "--method", "adam"], "unknown method 'adam'"),
    (["fit", "--max-iter", "0"], "expected a positive integer, got '0'"),
    (["fit", "--test-fraction", "1.5"], "expected a number in [0, 1), got '1.5'"),
    (["fit", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["fit", "--curvature", "exact"], "invalid choice: 'exact'"),
    (["bench", "--methods", "trust-krylov,nope"], "unknown method 'nope'"),
    (["inspect"], "the following arguments are required: checkpoint"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_and_corrupted_files_exit_1(tmp_path, capsys):
    missing = str(tmp_path / "nope.npz")
    assert main(["inspect", missing]) == 1
    assert f"checkpoint {missing!r} does not exist" in capsys.readouterr().err
    assert main(["summary", missing]) == 1
    capsys.readouterr()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    assert main(["inspect", str(bad)]) == 1
    assert "is not a valid .npz checkpoint" in capsys.readouterr().err
    assert main(["fit", *SMALL, "--out", str(tmp_path)]) == 0
    good = (tmp_path / "model.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "cut.npz")]) == 1
    assert "is not a valid .npz checkpoint" in capsys.readouterr().err
    plain = tmp_path / "plain.npz"
    ft.save(str(plain), ft.Chain(ft.Dense(2, 3)))
    assert main(["summary", str(plain)]) == 1
    assert "was not written by `fluxtree fit`" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_bad_data_sets_and_output_folder_exit_1(tmp_path, capsys):
    assert main(["fit", "--dataset", "mnist", "--no-progress"]) == 1
    assert "unknown data set 'mnist': expected one of digits, iris" in capsys.readouterr().err
    assert main(["fit", "--dataset", str(tmp_path / "none.npz"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "d.npz", X=np.zeros((5, 2)))
    assert main(["fit", "--dataset", str(tmp_path / "d.npz"), "--no-progress"]) == 1
    assert "must hold arrays 'X' and 'y'" in capsys.readouterr().err
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["fit", *SMALL, "--out", str(afile)]) == 1
    assert "is a file; expected a folder" in capsys.readouterr().err


def test_corrupted_checkpoint_in_a_subprocess(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    proc = run_cli("inspect", str(bad))
    assert proc.returncode == 1
    assert "fluxtree inspect: error:" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------
def test_bench_fluxtree_only(capsys):
    code = main(["bench", "--dataset", "iris", "--hidden", "4", "--backends", "fluxtree",
                 "--methods", "trust-krylov,L-BFGS-B", "--target-loss", "0.2"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if ln.startswith(("trust-krylov", "L-BFGS-B"))]
    assert len(rows) == 2 and all("fluxtree" in r for r in rows)


@pytest.mark.skipif(not (importlib.util.find_spec("torch") and importlib.util.find_spec("jax")),
                    reason="needs torch and jax")
def test_bench_anchors_reach_the_same_loss_with_the_same_counts():
    proc = run_cli("bench", "--dataset", "iris", "--hidden", "4", "--methods",
                   "trust-krylov,Newton-CG", "--target-loss", "0.2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines()
            if ln.startswith(("trust-krylov", "Newton-CG"))]
    assert [r[1] for r in rows] == ["fluxtree", "torch", "jax"] * 2
    for group in (rows[:3], rows[3:]):
        # ... fun jac hessp loss train % test %
        counts = {tuple(r[-8:-5]) for r in group}
        assert len(counts) == 1, group
        assert all(float(r[-5]) <= 0.2 for r in group)


def test_bench_refuses_what_the_anchors_cannot_do(capsys):
    assert main(["bench", "--batchnorm", "--backends", "fluxtree,torch"]) == 1
    assert "anchors build plain MLPs" in capsys.readouterr().err
    assert main(["bench", "--curvature", "gauss-newton"]) == 1
    assert "exact Hessian-vector" in capsys.readouterr().err
    assert main(["bench", "--backends", "tensorflow"]) == 1
    assert "--backends takes fluxtree, torch and jax" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# data sets, specs, parser
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, shape, classes", [
    ("digits", (1797, 64), 10), ("iris", (150, 4), 3), ("wine", (178, 13), 3),
    ("breast_cancer", (569, 30), 2)])
def test_bundled_data_sets(name, shape, classes):
    pytest.importorskip("sklearn")
    X, y = _data.read(name)
    assert X.shape == shape and X.dtype == np.float64 and len(np.unique(y)) == classes
    d = _data.load(name, test_fraction=0.25, seed=3)
    assert d.X_train.shape[0] + d.X_test.shape[0] == shape[0]
    assert d.X_test.shape[0] == round(0.25 * shape[0])
    np.testing.assert_allclose(d.X_train.mean(0), 0, atol=1e-12)
    assert d.Y_train.shape[1] == classes and np.all(d.Y_train.sum(1) == 1)


def test_split_is_seeded_and_disjoint():
    a_train, a_test = _data.split(100, 0.2, seed=1)
    _, b_test = _data.split(100, 0.2, seed=1)
    np.testing.assert_array_equal(a_test, b_test)
    assert len(np.union1d(a_train, a_test)) == 100 and len(np.intersect1d(a_train, a_test)) == 0
    assert not np.array_equal(a_test, _data.split(100, 0.2, seed=2)[1])
    with pytest.raises(ValueError, match="leaves 1 training observations of 2"):
        _data.split(2, 0.5, seed=0)


def test_npz_data_set(tmp_path):
    X = np.arange(20.0).reshape(10, 2)
    y = np.array([3, 5] * 5)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    d = _data.load(str(tmp_path / "d.npz"), test_fraction=0.0)
    assert d.classes == 2 and d.features == 2 and d.X_test.shape == (0, 2)
    np.savez(tmp_path / "e.npz", X=X, y=np.zeros(3))
    with pytest.raises(ValueError, match=r"expected X of shape \(n, features\) and y of shape"):
        _data.load(str(tmp_path / "e.npz"))


def test_model_specs():
    assert _models.parse_hidden("64, 32") == [64, 32]
    assert _models.parse_hidden("none") == _models.parse_hidden("") == []
    spec = {"inputs": 3, "hidden": [], "outputs": 2, "activation": "relu", "batchnorm": False}
    m = _models.build(spec)
    assert repr(m) == "Chain(Dense(3 => 2))" and m[0].weight.dtype == np.float64
    with pytest.raises(ValueError, match="lacks \\['batchnorm'\\]"):
        _models.check_spec({k: v for k, v in spec.items() if k != "batchnorm"})
    with pytest.raises(ValueError, match="unknown activation 'soft'"):
        _models.check_spec(dict(spec, activation="soft"))
    with pytest.raises(ValueError, match="layer sizes must be positive ints"):
        _models.check_spec(dict(spec, hidden=[0]))


def test_parser_defaults():
    args = build_parser().parse_args(["fit"])
    assert (args.dataset, args.method, args.curvature, args.dtype, args.out) == (
        "digits", "trust-krylov", "hessian", "float64", ".")
    assert build_parser().parse_args(["fit", "--method", "newton-cg"]).method == "Newton-CG"


# ----------------------------------------------------------------------------
# the PNG writer
# ----------------------------------------------------------------------------
def test_encode_png_round_trips_pixels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    _png.write_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_png(tmp_path / "a.png"), rgb)
    with pytest.raises(ValueError, match=r"expects a \(height, width, 3\) uint8 array, got "
                                         r"shape \(2, 2\), dtype float64"):
        _png.encode_png(np.zeros((2, 2)))


def test_line_plot_draws_the_curve_and_handles_odd_values():
    img = _png.line_plot([10.0, 1.0, 0.1], width=300, height=200)
    blue = np.all(img == np.array(_png._LINE, np.uint8), axis=2)
    cols = np.flatnonzero(blue.any(axis=0))
    assert cols.min() < 110 and cols.max() > 270             # the line spans the plot
    ys = [np.flatnonzero(blue[:, c]).mean() for c in (cols.min() + 2, cols.max() - 2)]
    assert ys[0] < ys[1]                                     # it falls from left to right
    for values in ([], [1.0], [np.nan, 2.0, np.inf], [-1.0, 0.0, 1.0], [3.0, 3.0]):
        assert _png.line_plot(values, width=200, height=150).shape == (150, 200, 3)
    with pytest.raises(ValueError, match="a plot needs at least"):
        _png.line_plot([1.0], width=50, height=50)
