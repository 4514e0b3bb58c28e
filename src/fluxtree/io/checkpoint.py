"""Checkpoints: ``save`` / ``load`` for ``.npz`` and ``.safetensors``, atomic writes."""
from __future__ import annotations

import json
import math
import os
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from io import BytesIO
from typing import Any, BinaryIO

import numpy as np

from .._kernels._walk import KeyPath
from ._common import _host, _is_array, _short
from .state import state

__all__ = ["load", "save"]


# ----------------------------------------------------------------------------
# the metadata: the tree as a flat JSON node table
# ----------------------------------------------------------------------------
_FORMAT = "fluxtree.state"
_VERSION = 1
_NPZ_META = "__fluxtree__/metadata"


class _Corrupt(Exception):
    """A file that is not a valid checkpoint; turned into a ValueError naming the file."""


def _enc_float(v: float) -> Any:
    if math.isfinite(v):
        return v
    return ["f", "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")]


def _enc_scalar(v: Any) -> Any:
    """The JSON form of a non-array leaf, or raise TypeError (message has {path})."""
    if v is None or type(v) is str or type(v) is bool:
        return v
    if isinstance(v, np.generic):
        if v.dtype.hasobject:
            raise TypeError("object")
        return ["g", v.dtype.str, v.tobytes().hex()]
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return _enc_float(float(v))
    if isinstance(v, complex):
        return ["c", _enc_float(v.real), _enc_float(v.imag)]
    if isinstance(v, str):
        return str(v)
    if type(v) is tuple and not v:
        return ["e"]
    raise TypeError("unsupported")


def _dec_float(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, list) and len(v) == 2 and v[0] == "f" and v[1] in ("nan", "inf", "-inf"):
        return float(v[1])
    raise _Corrupt(f"bad float {v!r} in the metadata")


def _dec_value(v: Any, nodes: list, arrays: Callable[[str], Any]) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if not isinstance(v, list) or not v or not isinstance(v[0], str):
        raise _Corrupt(f"bad value {_short(v)} in the metadata")
    tag = v[0]
    if tag == "e" and len(v) == 1:
        return ()
    if tag == "a" and len(v) == 2 and isinstance(v[1], str):
        return arrays(v[1])
    if tag == "n" and len(v) == 2 and type(v[1]) is int:
        if not 0 <= v[1] < len(nodes):
            raise _Corrupt(f"node reference {v[1]} out of range in the metadata")
        return nodes[v[1]]
    if tag == "c" and len(v) == 3:
        return complex(_dec_float(v[1]), _dec_float(v[2]))
    if tag == "f" and len(v) == 2:
        return _dec_float(v)
    if tag == "g" and len(v) == 3 and isinstance(v[1], str) and isinstance(v[2], str):
        try:
            dt = np.dtype(v[1])
            if dt.hasobject:
                raise TypeError
            raw = bytes.fromhex(v[2])
            return np.frombuffer(raw, dtype=dt, count=1)[0] if dt.itemsize else dt.type()
        except (TypeError, ValueError):
            raise _Corrupt(f"bad NumPy scalar {_short(v)} in the metadata") from None
    raise _Corrupt(f"bad value {_short(v)} in the metadata")


class _Encoder:
    """Turns a state tree into (metadata root, node table, [(key, array)])."""

    def __init__(self, check_array: Callable[[np.ndarray], str | None]) -> None:
        self.check_array = check_array
        self.nodes: list = []
        self.arrays: list[tuple[str, np.ndarray]] = []
        self.array_keys: dict[int, str] = {}
        self.used: set[str] = {_NPZ_META}
        self.memo: dict[int, int] = {}
        self.alive: list = []

    def run(self, tree: Any) -> Any:
        frames: list[list] = []       # [node, items, next index, encoded children, key]
        active: set[int] = set()
        result: Any = None
        enc = self.visit(tree, frames, active)
        if not frames:
            return enc
        while frames:
            fr = frames[-1]
            if fr[2] < len(fr[1]):
                key, child = fr[1][fr[2]]
                fr[2] += 1
                fr[4] = key
                e = self.visit(child, frames, active)
                if e is not _PUSHED:
                    fr[3].append(e)
                continue
            frames.pop()
            node = fr[0]
            active.discard(id(node))
            if type(node) is dict:
                keys = [k for k, _ in fr[1]]
                entry: list = ["d", [[self.key(k, frames), e]
                                     for k, e in zip(keys, fr[3])]]
            else:
                entry = ["t" if type(node) is tuple else "l", fr[3]]
            self.nodes.append(entry)
            ref = ["n", len(self.nodes) - 1]
            if type(node) is not tuple:
                self.memo[id(node)] = len(self.nodes) - 1
                self.alive.append(node)
            if frames:
                frames[-1][3].append(ref)
            else:
                result = ref
        return result

    def path(self, frames: list) -> KeyPath:
        return KeyPath(*(fr[4] for fr in frames))

    def key(self, k: Any, frames: list) -> Any:
        try:
            e = _enc_scalar(k)
        except TypeError:
            e = ["e"]
        if isinstance(e, list) and e[0] == "e":
            raise TypeError(f"save: cannot store the dict key {_short(k)} (type "
                            f"{type(k).__name__}) at {self.path(frames)}; keys must be str, "
                            "int, bool, float or None.")
        return e

    def visit(self, v: Any, frames: list, active: set) -> Any:
        t = type(v)
        if (t is tuple and v) or t is list or t is dict:
            if t is not tuple:
                hit = self.memo.get(id(v))
                if hit is not None:
                    return ["n", hit]
                if id(v) in active:
                    raise ValueError(f"save: the tree contains itself: a cycle through "
                                     f"{self.path(frames)}.")
                active.add(id(v))
            items = list(v.items()) if t is dict else list(enumerate(v))
            frames.append([v, items, 0, [], None])
            return _PUSHED
        if _is_array(v):
            return ["a", self.array(v, frames)]
        try:
            return _enc_scalar(v)
        except TypeError:
            raise TypeError(f"save: cannot store the value {_short(v)} of type "
                            f"{type(v).__name__} at {self.path(frames)}; a state holds "
                            "arrays, numbers, str, None and ().") from None

    def array(self, a: Any, frames: list) -> str:
        key = self.array_keys.get(id(a))
        if key is not None:
            return key
        path = self.path(frames)
        host = _host(a)
        if host.dtype.hasobject:
            raise TypeError(f"save: cannot store the object array at {path} (dtype "
                            f"{host.dtype}): fluxtree never pickles; convert it to a numeric "
                            "array first.")
        problem = self.check_array(host)
        if problem is not None:
            raise TypeError(f"save: {problem} at {path}.")
        key = str(path)
        n = 1
        while key in self.used:
            n += 1
            key = f"{path}#{n}"
        self.used.add(key)
        self.array_keys[id(a)] = key
        self.alive.append(a)
        self.arrays.append((key, host))
        return key


class _Pushed:
    pass


_PUSHED = _Pushed()


def _metadata(tree: Any, check_array: Callable[[np.ndarray], str | None],
              extra: Callable[[list], dict] | None = None) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    enc = _Encoder(check_array)
    root = enc.run(tree)
    meta: dict = {"format": _FORMAT, "version": _VERSION, "root": root, "nodes": enc.nodes}
    if extra:
        meta.update(extra(enc.arrays))
    text = json.dumps(meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8"), enc.arrays


def _decode_metadata(raw: bytes | str, arrays: dict[str, Any]) -> Any:
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise _Corrupt(f"its metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise _Corrupt("its metadata is not a fluxtree state")
    if meta.get("version") != _VERSION:
        raise _Corrupt(f"it has state format version {meta.get('version')!r}; this "
                       f"fluxtree reads version {_VERSION}")
    table = meta.get("nodes")
    if not isinstance(table, list) or "root" not in meta:
        raise _Corrupt("its metadata has no node table")

    def array(key: str) -> Any:
        try:
            return arrays[key]
        except KeyError:
            raise _Corrupt(f"the metadata refers to an array {key!r} that is not in the "
                           "file") from None

    nodes: list = []
    for entry in table:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in ("t", "l", "d")
                and isinstance(entry[1], list)):
            raise _Corrupt(f"bad node {_short(entry)} in the metadata")
        tag, body = entry
        if tag == "d":
            node: Any = {}
            for pair in body:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise _Corrupt(f"bad dict entry {_short(pair)} in the metadata")
                k = _dec_value(pair[0], [], array)
                if isinstance(k, (np.ndarray, dict, list, tuple)):
                    raise _Corrupt(f"bad dict key {_short(pair[0])} in the metadata")
                node[k] = _dec_value(pair[1], nodes, array)
        else:
            items = [_dec_value(v, nodes, array) for v in body]
            node = tuple(items) if tag == "t" else items
        nodes.append(node)
    return _dec_value(meta["root"], nodes, array)


# ----------------------------------------------------------------------------
# writing files
# ----------------------------------------------------------------------------
_CHUNK = 1 << 30


_WRITEBACK = 64 << 20       # start writing back to disk every this many bytes


class _Writeback:
    """Flushes a file to disk in a background thread while it is being written.

    The final ``fsync`` then finds little left to do: writing and the disk's writeback
    overlap instead of following each other.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = 0
        self.wake = threading.Event()
        self.done = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.done:
                return
            try:
                os.fdatasync(self.fd)
            except OSError:
                return

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= _WRITEBACK:
            self.pending = 0
            self.wake.set()

    def close(self) -> None:
        self.done = True
        self.wake.set()
        self.thread.join()


def _write_all(fd: int, data: Any, wb: _Writeback | None = None) -> None:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    while len(mv):
        n = os.write(fd, mv[:_WRITEBACK])
        mv = mv[n:]
        if wb is not None:
            wb.wrote(n)


def _bytes_of(a: np.ndarray) -> memoryview:
    """The raw bytes of a C-contiguous array, without a copy."""
    return memoryview(a.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, writer: Callable[[int, _Writeback | None], None]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(f"save: could not create a temporary file in {directory}")
    try:
        wb = _Writeback(fd) if hasattr(os, "fdatasync") else None
        try:
            try:
                writer(fd, wb)
            finally:
                if wb is not None:
                    wb.close()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


# --- safetensors -------------------------------------------------------------
_ST_DTYPES = {
    "F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4",
    "I64": "<i8", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?",
}
_ST_OF = {np.dtype(v).newbyteorder("="): k for k, v in _ST_DTYPES.items()}
_ST_COMPLEX = {np.dtype("complex64"): "F32", np.dtype("complex128"): "F64"}


def _st_check(a: np.ndarray) -> str | None:
    dt = a.dtype.newbyteorder("=")
    if dt in _ST_OF or dt in _ST_COMPLEX:
        return None
    return (f"safetensors cannot store a {a.dtype} array (it holds "
            f"{', '.join(_ST_DTYPES)} and complex as a pair); save as .npz instead")


def _le_contiguous(a: np.ndarray) -> np.ndarray:
    le = a.dtype.newbyteorder("<")
    if a.dtype == le and a.flags.c_contiguous:
        return a
    return a.astype(le, order="C")


def _save_safetensors(path: str, tree: Any) -> None:
    def complex_keys(arrays: list) -> dict:
        return {"complex": {k: a.dtype.newbyteorder("=").name for k, a in arrays
                            if a.dtype.kind == "c"}}

    meta, arrays = _metadata(tree, _st_check, complex_keys)
    # widest items first, so every tensor's offset is a multiple of its item size
    order = sorted(range(len(arrays)), key=lambda i: -arrays[i][1].dtype.itemsize)
    header: dict = {"__metadata__": {"format": "np", "fluxtree": meta.decode("utf-8"),
                                     "fluxtree.crc32": f"{zlib.crc32(meta):08x}"}}
    offset = 0
    blobs = []
    for i in order:
        key, a = arrays[i]
        dt = a.dtype.newbyteorder("=")
        if dt in _ST_COMPLEX:
            st, shape = _ST_COMPLEX[dt], [*a.shape, 2]
        else:
            st, shape = _ST_OF[dt], list(a.shape)
        data = _le_contiguous(a)
        header[key] = {"dtype": st, "shape": shape, "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)

    def writer(fd: int, wb: _Writeback | None) -> None:
        _write_all(fd, struct.pack("<Q", len(text)) + text)
        for data in blobs:
            if data.size:
                _write_all(fd, _bytes_of(data), wb)

    _atomic_write(path, writer)


# --- npz: a ZIP64 archive of .npy members, written directly -------------------
def _npy_header(a: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The .npy header for ``a`` and the C-contiguous array whose bytes follow it."""
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        data = a.T
    else:
        a = a if a.flags.c_contiguous else a.copy(order="C")
        data = a
    info = np.lib.format.header_data_from_array_1_0(a)
    buf = BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, info)
    except ValueError:
        buf = BytesIO()
        np.lib.format.write_array_header_2_0(buf, info)
    return buf.getvalue(), data


def _crc(header: bytes, data: np.ndarray) -> int:
    crc = zlib.crc32(header)
    if data.size:
        mv = _bytes_of(data)
        for i in range(0, len(mv), _CHUNK):
            crc = zlib.crc32(mv[i:i + _CHUNK], crc)
    return crc


def _dos_time() -> tuple[int, int]:
    t = time.localtime()
    year = max(t.tm_year, 1980)
    return (t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2,
            (year - 1980) << 9 | t.tm_mon << 5 | t.tm_mday)


def _save_npz(path: str, tree: Any) -> None:
    meta, arrays = _metadata(tree, lambda a: None)
    members = [(k + ".npy", *_npy_header(a)) for k, a in arrays]
    members.append((_NPZ_META + ".npy", *_npy_header(np.frombuffer(meta, dtype=np.uint8))))
    dostime, dosdate = _dos_time()

    def writer(fd: int, wb: _Writeback | None) -> None:
        central = []
        offset = 0
        with ThreadPoolExecutor(max_workers=1) as pool:
            crcs: list[Future] = []
            for name, header, data in members:
                bname = name.encode("utf-8")
                size = len(header) + data.nbytes
                # pad the extra field (zipalign's 0xD935 block) so the .npy data, which
                # follows a header of a multiple of 64 bytes, starts 64-byte aligned
                base = offset + 30 + len(bname) + 20
                pad = 6 + (-(base + 6)) % 64
                extra = struct.pack("<HHQQ", 1, 16, size, size)
                extra += struct.pack("<HHH", 0xD935, pad - 4, 64) + bytes(pad - 6)
                local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0x800, 0, dostime, dosdate,
                                    0, 0xFFFFFFFF, 0xFFFFFFFF, len(bname), len(extra))
                local += bname + extra
                crcs.append(pool.submit(_crc, header, data))
                _write_all(fd, local + header)
                if data.size:
                    _write_all(fd, _bytes_of(data), wb)
                central.append((bname, size, offset))
                offset += len(local) + size
            values = [f.result() for f in crcs]
        for (bname, size, at), crc in zip(central, values):
            os.pwrite(fd, struct.pack("<I", crc), at + 14)
        cd = bytearray()
        for (bname, size, at), crc in zip(central, values):
            cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 | (3 << 8), 45, 0x800, 0,
                              dostime, dosdate, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(bname), 28,
                              0, 0, 0, 0o100644 << 16, 0xFFFFFFFF)
            cd += bname + struct.pack("<HHQQQ", 1, 24, size, size, at)
        n = len(central)
        end = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(cd), offset)
        end += struct.pack("<IIQI", 0x07064B50, 0, offset + len(cd), 1)
        end += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                           0xFFFFFFFF, 0xFFFFFFFF, 0)
        os.lseek(fd, 0, os.SEEK_END)
        _write_all(fd, bytes(cd) + end)

    _atomic_write(path, writer)


# ----------------------------------------------------------------------------
# reading files
# ----------------------------------------------------------------------------
def _readinto(f: BinaryIO, a: np.ndarray, what: str) -> None:
    if not a.size:
        return
    mv = _bytes_of(a)
    got = 0
    while got < len(mv):
        n = f.readinto(mv[got:got + _CHUNK])  # type: ignore[attr-defined]
        if not n:
            raise _Corrupt(f"it is truncated: {what} ends after {got} of {len(mv)} bytes")
        got += n


def _load_safetensors(path: str) -> Any:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _Corrupt(f"it is too short ({size} bytes) for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 1 << 30:
            raise _Corrupt(f"its header length {n} does not fit the file size {size} (not a "
                           "safetensors file, or truncated)")
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise _Corrupt(f"its header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise _Corrupt("its header is not a JSON object")
        meta = header.pop("__metadata__", None)
        if meta is not None and not (isinstance(meta, dict)
                                     and all(isinstance(v, str) for v in meta.values())):
            raise _Corrupt("its __metadata__ is not a map of strings")
        complex_of: dict = {}
        fluxmeta = meta.get("fluxtree") if meta else None
        if fluxmeta is not None and meta is not None:
            if meta.get("fluxtree.crc32") != f"{zlib.crc32(fluxmeta.encode('utf-8')):08x}":
                raise _Corrupt("its fluxtree metadata fails its CRC-32 check")
            try:
                parsed = json.loads(fluxmeta)
                complex_of = parsed.get("complex", {}) if isinstance(parsed, dict) else {}
            except ValueError:
                pass      # reported by _decode_metadata
            if not isinstance(complex_of, dict):
                raise _Corrupt("its complex-array table is not a JSON object")
        data_size = size - 8 - n
        entries = []
        for key, info in header.items():
            if not (isinstance(info, dict) and info.get("dtype") in _ST_DTYPES
                    and isinstance(info.get("shape"), list)
                    and all(type(d) is int and d >= 0 for d in info["shape"])
                    and isinstance(info.get("data_offsets"), list)
                    and len(info["data_offsets"]) == 2
                    and all(type(o) is int for o in info["data_offsets"])):
                raise _Corrupt(f"its header entry for {key!r} is malformed: {_short(info)}")
            dt = np.dtype(_ST_DTYPES[info["dtype"]])
            begin, stop = info["data_offsets"]
            shape = tuple(info["shape"])
            if stop - begin != math.prod(shape) * dt.itemsize or begin < 0:
                raise _Corrupt(f"the tensor {key!r} has offsets {info['data_offsets']} that do "
                               f"not match its shape {list(shape)} and dtype {info['dtype']}")
            entries.append((begin, stop, key, dt, shape))
        entries.sort(key=lambda e: (e[0], e[1]))
        at = 0
        for begin, stop, key, _, _ in entries:
            if begin != at:
                raise _Corrupt(f"the tensor {key!r} starts at byte {begin} of the data, "
                               f"expected {at} (overlapping or missing data)")
            at = stop
        if at > data_size:
            raise _Corrupt(f"it is truncated: its header describes {at} bytes of data, the file "
                           f"holds {data_size}")
        if at != data_size:
            raise _Corrupt(f"it has {data_size - at} bytes after the data its header describes")
        # one read into one buffer; the tensors are views of it (aligned: the writer puts
        # the widest items first, and np.empty aligns the buffer)
        buf = np.empty(at, dtype=np.uint8)
        _readinto(f, buf, "the data")
        arrays: dict[str, Any] = {}
        for begin, stop, key, dt, shape in entries:
            if begin % dt.itemsize:
                a = buf[begin:stop].copy().view(dt).reshape(shape)
            else:
                a = buf[begin:stop].view(dt).reshape(shape)
            if not a.dtype.isnative:
                a = a.astype(a.dtype.newbyteorder("="))
            kind = complex_of.get(key)
            if kind is not None:
                if kind not in ("complex64", "complex128") or not shape or shape[-1] != 2 \
                        or np.dtype(kind).itemsize != 2 * dt.itemsize or dt.kind != "f":
                    raise _Corrupt(f"the complex tensor {key!r} is not stored as a pair")
                a = a.view(np.dtype(kind)).reshape(shape[:-1])
            arrays[key] = a
    if fluxmeta is None:
        return arrays
    return _decode_metadata(fluxmeta, arrays)


def _npz_member(f: BinaryIO, zf: zipfile.ZipFile, info: zipfile.ZipInfo, buf: np.ndarray,
                pool: ThreadPoolExecutor, checks: list) -> np.ndarray:
    """One member, read into its place in ``buf`` (the file's size) and viewed from there."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        with zf.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise _Corrupt(f"the local header of {info.filename!r} is damaged")
    flags, method = struct.unpack("<HH", local[6:10])
    (crc,) = struct.unpack("<I", local[14:18])
    nlen, elen = struct.unpack("<HH", local[26:30])
    name = f.read(nlen)
    if (name != info.orig_filename.encode("utf-8" if flags & 0x800 else "cp437")
            or method != info.compress_type or (crc != info.CRC and not flags & 0x8)):
        raise _Corrupt(f"the local header of {info.filename!r} does not match the zip "
                       "directory")
    start = info.header_offset + 30 + nlen + elen
    stop = start + info.file_size
    if stop > len(buf):
        raise _Corrupt(f"it is truncated: the member {info.filename!r} ends past the file")
    f.seek(start)
    blob = buf[start:stop]
    _readinto(f, blob, f"the member {info.filename!r}")
    head = BytesIO(blob[:12288].tobytes())
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as e:      # the header parser raises SyntaxError, TokenError, ...
        raise _Corrupt(f"the member {info.filename!r} is not a valid .npy array ({e})") from None
    if dtype.hasobject:
        raise _Corrupt(f"the member {info.filename!r} holds an object array; fluxtree never "
                       "unpickles")
    hlen = head.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if hlen + nbytes != info.file_size:
        raise _Corrupt(f"the member {info.filename!r} has {info.file_size} bytes, its .npy "
                       f"header describes {hlen + nbytes}")
    checks.append((info, pool.submit(zlib.crc32, memoryview(blob))))  # type: ignore[arg-type]
    data = blob[hlen:]
    if dtype.itemsize and data.ctypes.data % dtype.alignment:
        data = data.copy()                        # unaligned (another writer): own buffer
    a = data.view(dtype) if dtype.itemsize else np.empty(0, dtype)
    a = a.reshape(shape[::-1] if fortran else shape)
    return a.T if fortran else a


def _load_npz(path: str) -> Any:
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"PK\x03\x04":
            raise _Corrupt(f"it is not a .npz (zip) file: it starts with {magic!r}; fluxtree "
                           "never unpickles")
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except Exception as e:      # BadZipFile, NotImplementedError, struct.error, ...
            raise _Corrupt(f"it is not a readable zip archive ({e}); truncated?") from None
        arrays: dict[str, Any] = {}
        meta = None
        checks: list = []
        size = os.fstat(f.fileno()).st_size
        raw = np.empty(size + 64, dtype=np.uint8)
        skip = -raw.ctypes.data % 64
        buf = raw[skip:skip + size]           # 64-byte aligned, like the members' data
        with zf, ThreadPoolExecutor(max_workers=1) as pool:
            for info in zf.infolist():
                name = info.filename
                if not name.endswith(".npy"):
                    raise _Corrupt(f"it holds the member {name!r}, which is not a .npy array")
                try:
                    a = _npz_member(f, zf, info, buf, pool, checks)
                except _Corrupt:
                    raise
                except Exception as e:  # BadZipFile, NotImplementedError, ValueError, ...
                    raise _Corrupt(f"its member {name!r} is damaged ({e})") from None
                if name[:-4] == _NPZ_META:
                    meta = a
                else:
                    arrays[name[:-4]] = a
            for info, fut in checks:
                if fut.result() != info.CRC:
                    raise _Corrupt(f"the member {info.filename!r} fails its CRC-32 check "
                                   "(the file is damaged)")
    if meta is None:
        return arrays
    if meta.dtype != np.uint8 or meta.ndim != 1:
        raise _Corrupt("its metadata entry is not a uint8 vector")
    try:
        text = meta.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt("its metadata is not UTF-8") from None
    return _decode_metadata(text, arrays)


# ----------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------
def _format_of(path: Any, what: str) -> tuple[str, str]:
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    lower = p.lower()
    for ext in (".npz", ".safetensors"):
        if lower.endswith(ext):
            return p, ext
    raise ValueError(f"{what}: unknown checkpoint format for {p!r}: the file name must end "
                     "in .npz or .safetensors.")


def save(path: str | os.PathLike, x: Any) -> None:
    """Write ``state(x)`` to ``path`` (``.npz`` or ``.safetensors``), atomically.

    Arrays are stored under their key paths (``layers[0].weight``), each tied array once;
    the structure and the other leaves go in a JSON metadata entry.  Object arrays are a
    ``TypeError`` (nothing is pickled).  The file appears complete or not at all.

    >>> import numpy as np, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> w = np.arange(3.0)
    >>> save(os.path.join(d, "m.npz"), {"w": w, "tied": w, "cfg": (1, "x")})
    >>> s = load(os.path.join(d, "m.npz"))
    >>> s
    {'w': array([0., 1., 2.]), 'tied': array([0., 1., 2.]), 'cfg': (1, 'x')}
    >>> s["w"] is s["tied"]
    True
    """
    p, ext = _format_of(path, "save")
    tree = state(x)
    if ext == ".npz":
        _save_npz(p, tree)
    else:
        _save_safetensors(p, tree)


def load(path: str | os.PathLike) -> Any:
    """Read a state written by ``save`` (or any ``.npz`` / ``.safetensors`` file).

    Gives the state tree, ready for ``loadmodel_(model, load(path))``.  A file without
    fluxtree metadata gives a dict of its arrays by name.  A truncated, damaged or foreign
    file is a ``ValueError`` naming it; nothing in the file is ever executed or unpickled.
    """
    p, ext = _format_of(path, "load")
    try:
        return _load_npz(p) if ext == ".npz" else _load_safetensors(p)
    except _Corrupt as e:
        raise ValueError(f"load: {p!r} is not a valid {ext} checkpoint: {e}.") from None
