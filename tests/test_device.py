"""cpu / gpu (SPEC Part A 11, Part B 3.5-3.6, seed 001's cpu/gpu/DataLoader examples).

Without a GPU the tests run ``gpu`` for real (it warns once and returns its input) and run the
moving logic against a stand-in for CuPy (``FakeCupy``, a NumPy array "on the device"), put in
``sys.modules["cupy"]`` where ``fluxtree.device`` looks for it.  Tests marked ``gpu`` use
CuPy itself: moves, ``gpu(DataLoader)``, and ``destructure`` / ``Restructure`` of a GPU model.
"""
import collections
import dataclasses
import sys
import warnings

import numpy as np
import pytest

from fluxtree import device, functor
from fluxtree.data import DataLoader, DeviceLoader
from fluxtree.device import (
    NoGPUWarning,
    array_module,
    cpu,
    gpu,
    gpu_dtype,
    is_gpu_array,
)
from fluxtree.flat import destructure, restructure
from fluxtree.nn import Dense, Dropout


class FakeArray:
    """A stand-in for ``cupy.ndarray``: a NumPy array that lives "on the device"."""

    def __init__(self, a):
        self.a = a

    dtype = property(lambda self: self.a.dtype)
    shape = property(lambda self: self.a.shape)
    ndim = property(lambda self: self.a.ndim)
    size = property(lambda self: self.a.size)

    def astype(self, dtype, copy=True):
        if not copy and self.a.dtype == dtype:
            return self
        return FakeArray(self.a.astype(dtype))

    def __getitem__(self, index):
        return FakeArray(self.a[index])


class FakeCupy:
    """A stand-in for the ``cupy`` module, recording the transfers."""

    ndarray = FakeArray

    def __init__(self, available=True):
        self.available = available
        self.uploads = []
        self.downloads = 0

    def is_available(self):
        if isinstance(self.available, Exception):
            raise self.available
        return self.available

    def asarray(self, a):
        assert isinstance(a, np.ndarray)
        self.uploads.append(a)
        return FakeArray(np.array(a))

    def asnumpy(self, x):
        self.downloads += 1
        return x.a.copy()


@pytest.fixture
def fresh(monkeypatch):
    """``fluxtree.device`` as in a new process: no GPU probed yet, no warning given yet."""
    monkeypatch.setattr(device, "_backend", device._Backend())


@pytest.fixture
def no_cupy(monkeypatch, fresh):
    monkeypatch.setitem(sys.modules, "cupy", None)      # `import cupy` raises ImportError


@pytest.fixture
def fake(monkeypatch, fresh):
    mod = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return mod


def on_device(x, dtype):
    return isinstance(x, FakeArray) and x.dtype == np.dtype(dtype)


# ----------------------------------------------------------------------------- no GPU


def test_gpu_without_cupy_warns_once_and_returns_its_input(no_cupy):
    m = {"w": np.ones((2, 3)), "layers": [np.zeros(2), "relu"]}
    with pytest.warns(NoGPUWarning, match=r"No usable GPU: CuPy could not be imported.*shown "
                                          r"once"):
        assert gpu(m) is m
    x = np.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gpu(x) is x                        # the same object, float64 kept
        assert gpu(m) is m
        assert gpu(1.5) == 1.5


def test_gpu_without_a_device_names_the_reason(monkeypatch, fresh):
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(available=False))
    x = np.ones(2)
    with pytest.warns(NoGPUWarning, match="CuPy found no usable CUDA device"):
        assert gpu(x) is x


def test_gpu_with_a_broken_driver_warns(monkeypatch, fresh):
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(available=RuntimeError("driver too old")))
    with pytest.warns(NoGPUWarning, match=r"could not query.*RuntimeError: driver too old"):
        assert gpu([1]) == [1]


def test_no_gpu_warning_is_a_user_warning():
    assert issubclass(NoGPUWarning, UserWarning)


def test_gpu_available(monkeypatch, no_cupy):
    assert device.gpu_available() is False
    monkeypatch.setattr(device, "_backend", device._Backend())
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy())
    assert device.gpu_available() is True


def test_gpu_of_a_data_loader_without_gpu_is_the_loader(no_cupy):
    d = DataLoader(np.ones((4, 2)), batchsize=2)
    with pytest.warns(NoGPUWarning):
        assert gpu(d) is d


# ----------------------------------------------------------------------------- dtype rule


@pytest.mark.parametrize(("dtype", "target"), [
    ("float64", "float32"), ("complex128", "complex64"), ("float32", "float32"),
    ("float16", "float16"), ("complex64", "complex64"), ("longdouble", "float32"),
    ("clongdouble", "complex64"), ("int64", "int64"), ("int8", "int8"), ("uint16", "uint16"),
    ("bool", "bool"), (">f8", "float32"), (">i4", "int32"), ("<c8", "complex64"),
])
def test_gpu_dtype(dtype, target):
    got = gpu_dtype(dtype)
    assert got == np.dtype(target) and got.isnative


@pytest.mark.parametrize("dtype", ["U3", "S2", "O", "M8[s]", "m8[s]", "V4", [("a", "f8")],
                                   ("f4", (2,))])
def test_gpu_dtype_of_what_stays_on_the_host(dtype):
    assert gpu_dtype(dtype) is None


# ----------------------------------------------------------------------------- moves


def test_gpu_moves_arrays_with_the_dtype_rule(fake):
    m = {"f64": np.ones((2, 2)), "c128": np.ones(2, complex), "f16": np.ones(2, np.float16),
         "f32": np.ones(3, np.float32), "i": np.arange(3), "b": np.array([True]),
         "s": np.array(["ab", "c"]), "o": np.array([None, 1], dtype=object)}
    g = gpu(m)
    assert on_device(g["f64"], "float32") and g["f64"].shape == (2, 2)
    assert on_device(g["c128"], "complex64")
    assert on_device(g["f16"], "float16") and on_device(g["f32"], "float32")
    assert on_device(g["i"], "int64") and on_device(g["b"], "bool")
    assert g["s"] is m["s"] and g["o"] is m["o"]           # CuPy cannot hold them
    np.testing.assert_array_equal(g["f64"].a, np.ones((2, 2), np.float32))
    assert len(fake.uploads) == 6
    # float64 goes over as it is and is cast on the device
    assert fake.uploads[0].dtype == np.float64


def test_gpu_keeps_structure_scalars_and_other_leaves(fake):
    Pair = collections.namedtuple("Pair", "a b")

    @dataclasses.dataclass
    class Cfg:
        w: np.ndarray
        name: str

    @functor
    class Layer:
        def __init__(self, weight, act):
            self.weight, self.act = weight, act

    rng = np.random.default_rng(0)
    fn = np.tanh
    m = (Pair(np.ones(1), 2.0), [Cfg(np.zeros(2), "c"), Layer(np.ones((2, 2)), fn)],
         {"eps": np.float64(1e-5), "none": None, "flag": False, "rng": rng, "r": range(3)})
    g = gpu(m)
    pair, (cfg, layer), rest = g
    assert type(pair) is Pair and on_device(pair.a, "float32") and pair.b == 2.0
    assert type(cfg) is Cfg and on_device(cfg.w, "float32") and cfg.name == "c"
    assert type(layer) is Layer and on_device(layer.weight, "float32") and layer.act is fn
    assert type(rest["eps"]) is np.float64 and rest["eps"] == 1e-5      # scalars untouched
    assert rest["none"] is None and rest["flag"] is False
    assert rest["rng"] is rng and rest["r"] == range(3)


def test_gpu_keeps_ties(fake):
    w = np.ones((2, 2))
    g = gpu({"enc": w, "dec": w, "other": np.ones((2, 2))})
    assert g["enc"] is g["dec"] and g["enc"] is not g["other"]
    assert len(fake.uploads) == 2


def test_gpu_converts_arrays_already_on_the_device(fake):
    f32 = FakeArray(np.ones(2, np.float32))
    f64 = FakeArray(np.ones(2))
    g = gpu([f32, f64])
    assert g[0] is f32 and on_device(g[1], "float32")
    assert fake.uploads == []


def test_gpu_of_a_non_native_array(fake):
    x = np.arange(3, dtype=">f8")
    g = gpu(x)
    assert on_device(g, "float32")
    assert fake.uploads[0].dtype.isnative
    np.testing.assert_array_equal(g.a, [0, 1, 2])


def test_cpu_of_a_tree_without_gpu_arrays_is_the_tree(no_cupy):
    m = {"w": np.ones(2), "layers": [Dense(2, 3), "relu"]}
    assert cpu(m) is m
    x = np.ones(2)
    assert cpu(x) is x and cpu(None) is None


def test_cpu_of_a_cpu_tree_is_the_tree_with_cupy_loaded(fake):
    m = [np.ones(2, np.float32), {"b": 1}]
    assert cpu(m) is m
    assert fake.downloads == 0


def test_cpu_brings_arrays_back_keeping_dtypes_and_ties(fake):
    w = FakeArray(np.arange(4, dtype=np.float32).reshape(2, 2))
    host = np.zeros(1)
    m = {"a": w, "b": [w, FakeArray(np.arange(2)), host], "s": "x"}
    c = cpu(m)
    assert type(c["a"]) is np.ndarray and c["a"].dtype == np.float32
    assert c["b"][0] is c["a"]
    assert c["b"][1].dtype == np.int64 and c["b"][2] is host and c["s"] == "x"
    np.testing.assert_array_equal(c["a"], [[0, 1], [2, 3]])
    assert fake.downloads == 2


def test_cpu_of_gpu_is_float32(fake):
    x = np.linspace(0, 1, 5)
    back = cpu(gpu(x))
    assert back.dtype == np.float32                    # not converted back to float64
    np.testing.assert_array_equal(back, x.astype(np.float32))


def test_array_module_and_is_gpu_array(fake):
    g = FakeArray(np.ones(1))
    assert is_gpu_array(g) and not is_gpu_array(np.ones(1))
    assert array_module(np.ones(1), g) is fake
    assert array_module(np.ones(1), 2.0) is np


def test_array_module_without_cupy(no_cupy):
    assert array_module(np.ones(1)) is np and not is_gpu_array(np.ones(1))


# ----------------------------------------------------------------------------- DataLoader


def test_gpu_of_a_data_loader_is_lazy(fake):
    X = np.arange(20.0).reshape(10, 2)
    d = DataLoader((X, np.arange(10)), batchsize=4)
    g = gpu(d)
    assert isinstance(g, DeviceLoader) and g.loader is d
    assert len(g) == len(d) == 3
    assert fake.uploads == []                          # nothing moved yet
    it = iter(g)
    x, y = next(it)
    assert on_device(x, "float32") and on_device(y, "int64")
    assert len(fake.uploads) == 2                      # one batch: two arrays
    np.testing.assert_array_equal(x.a, X[:4])
    rest = list(it)
    assert [b[0].shape for b in rest] == [(4, 2), (2, 2)]
    assert len(fake.uploads) == 6
    assert d.data[0] is X                              # the data stay on the host


def test_device_loader_with_a_move_function():
    calls = []

    def move(batch):
        calls.append(batch.copy())
        return -batch

    d = DeviceLoader(DataLoader(np.arange(5), batchsize=2), move)
    assert calls == [] and len(d) == 3
    first = next(iter(d))
    np.testing.assert_array_equal(first, [0, -1])
    assert len(calls) == 1
    assert [b.tolist() for b in d] == [[0, -1], [-2, -3], [-4]]
    assert len(calls) == 4
    assert repr(d) == "move(DataLoader(ndarray, batchsize=2))"


def test_device_loader_reshuffles_every_epoch():
    d = DeviceLoader(DataLoader(np.arange(50), batchsize=50, shuffle=True, rng=1), lambda b: b)
    a, b = next(iter(d)), next(iter(d))
    assert sorted(a) == sorted(b) == list(range(50)) and not np.array_equal(a, b)
    same = DataLoader(np.arange(50), batchsize=50, shuffle=True, rng=1)
    np.testing.assert_array_equal(a, next(iter(same)))


def test_device_loader_argument_errors():
    with pytest.raises(TypeError, match="needs a DataLoader, got list"):
        DeviceLoader([1, 2], cpu)
    with pytest.raises(TypeError, match="needs a callable move, got int"):
        DeviceLoader(DataLoader(np.ones(2)), 3)


def test_moving_a_device_loader_again_replaces_the_move(fake):
    d = DataLoader(np.ones((4, 2)), batchsize=2)
    g = gpu(d)
    c = cpu(g)
    assert isinstance(c, DeviceLoader) and c.loader is d and c.move is cpu
    assert gpu(c).move is gpu


def test_cpu_of_a_data_loader(no_cupy):
    d = DataLoader(np.arange(10.0).reshape(5, 2), batchsize=2)
    c = cpu(d)
    assert isinstance(c, DeviceLoader) and len(c) == len(d)
    np.testing.assert_array_equal(next(iter(c)), next(iter(d)))
    assert str(c).startswith("3-element cpu(DataLoader(ndarray, batchsize=2))\n  with first")


def test_data_loader_inside_a_tree_is_moved_lazily(fake):
    d = DataLoader(np.ones((4, 2)), batchsize=2)
    g = gpu({"train": d, "w": np.ones(2)})
    assert isinstance(g["train"], DeviceLoader) and g["train"].loader is d
    assert len(fake.uploads) == 1


# ----------------------------------------------------------------------------- seed 001


def test_seed_gpu_of_a_float64_dense_layer(fake):
    # julia> m = Dense(rand(2, 3)); typeof(gpu(m).weight) == CuArray{Float32, 2}
    m = Dense(np.random.default_rng(0).random((2, 3)))
    assert repr(m) == "Dense(3 => 2)" and m.weight.dtype == np.float64
    m_gpu = gpu(m)
    assert repr(m_gpu) == "Dense(3 => 2)"
    assert on_device(m_gpu.weight, "float32") and on_device(m_gpu.bias, "float32")
    assert m.weight.dtype == np.float64                # the original is unchanged


def test_seed_cpu_of_a_gpu_dense_layer(fake):
    # julia> m_gpu = Dense(CUDA.randn(2, 5)); m = m_gpu |> cpu; m.bias == Float32[0, 0]
    m_gpu = gpu(Dense(np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)))
    m = cpu(m_gpu)
    assert repr(m) == "Dense(5 => 2)"
    assert type(m.bias) is np.ndarray and m.bias.dtype == np.float32
    np.testing.assert_array_equal(m.bias, [0, 0])
    np.testing.assert_array_equal(m.weight, m_gpu.weight.a)


def test_seed_gpu_of_a_data_loader(fake):
    # julia> dl = DataLoader((x = ones(2, 10), y = 'a':'j'), batchsize=3); c_dl = gpu(dl)
    dl = DataLoader({"x": np.ones((10, 2)), "y": "abcdefghij"}, batchsize=3)
    assert len(dl) == 4
    first = next(iter(dl))
    np.testing.assert_array_equal(first["x"], np.ones((3, 2)))
    assert first["y"] == "abc"
    c_dl = gpu(dl)
    assert len(c_dl) == 4
    assert str(c_dl).startswith("4-element gpu(DataLoader(dict[ndarray, str], batchsize=3))")
    x = next(iter(c_dl))["x"]
    assert on_device(x, "float32") and x.shape == (3, 2)
    np.testing.assert_array_equal(x.a, np.ones((3, 2)))


def test_seed_data_loader_of_moved_data(fake):
    # julia> DataLoader((x = ones(2, 10), y = 2:11) |> gpu, batchsize=3)
    data = gpu({"x": np.ones((10, 2)), "y": range(2, 12)})
    d = DataLoader(data, batchsize=3)
    assert len(d) == 4
    batch = next(iter(d))
    assert on_device(batch["x"], "float32") and batch["x"].shape == (3, 2)
    assert batch["y"] == range(2, 5)


def test_moving_the_data_or_the_loader_gives_equal_batches(fake):
    # SPEC 3.6: DataLoader(X |> gpu; batchsize=13) and DataLoader(X; batchsize=13) |> gpu
    X = np.random.default_rng(2).random((30, 3))
    pre = DataLoader(gpu(X), batchsize=13)
    post = gpu(DataLoader(X, batchsize=13))
    for a, b in zip(pre, post, strict=True):
        np.testing.assert_array_equal(a.a, b.a)
    back = [cpu(b) for b in pre]                       # pre |> cpu: float32 on the host
    assert all(type(b) is np.ndarray and b.dtype == np.float32 for b in back)


def test_spec_gpu_examples(fake):
    # gpu(rand(10, 10)) isa CuArray{Float32, 2}; gpu((; a = ones(1))).a isa CuVector{Float32}
    assert on_device(gpu(np.random.default_rng(3).random((10, 10))), "float32")
    NT = collections.namedtuple("NT", "a")
    g = gpu(NT(np.ones(1)))
    assert type(g) is NT and on_device(g.a, "float32") and g.a.shape == (1,)
    # Char arrays move in Julia; NumPy strings have no CuPy dtype and stay on the host
    chars = np.array(["a", "b", "c"])
    assert gpu(NT(chars)).a is chars


def test_spec_cpu_keeps_rng_objects(fake):
    user = np.random.default_rng(4)
    m = [Dropout(0.5, rng=user), FakeArray(np.ones(1))]
    assert cpu(m)[0].rng is user
    assert gpu([Dropout(0.5, rng=user), np.ones(1)])[0].rng is user


# ----------------------------------------------------------------------------- on a GPU

gpu_only = pytest.mark.gpu


@gpu_only
def test_gpu_with_cupy():
    import cupy as cp
    w = np.ones((2, 3))
    m = {"w": w, "tied": w, "i": np.arange(3), "c": np.ones(2, complex), "s": np.array(["x"])}
    g = gpu(m)
    assert isinstance(g["w"], cp.ndarray) and g["w"].dtype == cp.float32
    assert g["tied"] is g["w"] and g["i"].dtype == cp.int64 and g["c"].dtype == cp.complex64
    assert g["s"] is m["s"]
    assert g["w"].device.id == cp.cuda.Device().id
    assert is_gpu_array(g["w"]) and array_module(g["w"]) is cp
    back = cpu(g)
    assert type(back["w"]) is np.ndarray and back["w"].dtype == np.float32
    assert back["tied"] is back["w"]
    np.testing.assert_array_equal(back["w"], w)


@gpu_only
def test_gpu_data_loader_with_cupy():
    import cupy as cp
    X = np.arange(20.0).reshape(10, 2)
    batches = list(gpu(DataLoader(X, batchsize=4, shuffle=True, rng=0)))
    assert all(isinstance(b, cp.ndarray) and b.dtype == cp.float32 for b in batches)
    np.testing.assert_array_equal(np.sort(np.concatenate([cp.asnumpy(b) for b in batches]),
                                          axis=0), X)
    d = DataLoader(gpu(X), batchsize=3, shuffle=True, rng=0)
    assert sum(b.shape[0] for b in d) == 10


def _gpu_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    return {"enc": w, "dec": w, "b": rng.standard_normal(3),
            "c": (rng.standard_normal(2) + 1j).astype(np.complex64),
            "h": rng.standard_normal(4).astype(np.float16), "steps": np.arange(2),
            "t": rng.standard_normal((4, 3)).T}


@gpu_only
def test_destructure_of_a_gpu_model_matches_the_cpu():
    import cupy as cp
    host = _gpu_model()
    model = {k: (cp.asarray(v) if isinstance(v, np.ndarray) and k != "steps" else v)
             for k, v in host.items()}
    model["dec"] = model["enc"]                        # the tie
    model["t"] = cp.asarray(host["t"].T).T             # not C-contiguous on the device
    flat_cpu, re_cpu = destructure(host)
    flat, re = destructure(model)
    assert isinstance(flat, cp.ndarray) and flat.dtype == flat_cpu.dtype
    np.testing.assert_array_equal(cp.asnumpy(flat), flat_cpu)
    assert len(re) == len(re_cpu)
    v = flat * 2
    new = re(v)
    assert new["enc"] is new["dec"] and new["steps"] is model["steps"]
    for k in ("enc", "b", "c", "h", "t"):
        assert isinstance(new[k], cp.ndarray) and new[k].dtype == model[k].dtype
        np.testing.assert_array_equal(cp.asnumpy(new[k]),
                                      re_cpu(flat_cpu * 2)[k].astype(model[k].dtype))
    # copy=False: the float64 parameter "b" (slots 6-8) is a view into a float64 vector
    v64 = cp.arange(len(re), dtype=cp.float64)
    views = re(v64, copy=False)
    assert views["b"].data.ptr == v64.data.ptr + 6 * 8
    v64[6] = -1.0
    assert float(views["b"][0]) == -1.0
    np.testing.assert_array_equal(cp.asnumpy(views["t"]), np.arange(15, 27.0).reshape(3, 4))
    np.testing.assert_array_equal(cp.asnumpy(re.flatten(model)), flat_cpu)
    out = cp.empty(len(re), flat.dtype)
    assert re.flatten(model, out=out) is out
    np.testing.assert_array_equal(cp.asnumpy(out), flat_cpu)
    # an integer vector counts as float64
    np.testing.assert_array_equal(cp.asnumpy(re(cp.arange(len(re)))["b"]), [6.0, 7.0, 8.0])


@gpu_only
def test_gpu_model_errors():
    import cupy as cp
    re = restructure({"w": cp.ones(3, cp.float32)})
    with pytest.raises(ValueError, match="lives on the GPU but the vector is a ndarray"):
        re(np.ones(3))
    with pytest.raises(ValueError, match="expected a vector of length 3, got 4"):
        re(cp.ones(4))
    with pytest.raises(NotImplementedError, match="only the model itself"):
        re.flatten({"w": cp.ones(3, cp.float32)})
    with pytest.raises(ValueError, match="mixes CPU and GPU parameters"):
        destructure({"a": np.ones(2), "b": cp.ones(2)})
