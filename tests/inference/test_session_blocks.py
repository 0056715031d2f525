"""Provider choice that never falls back silently, and the block vocabulary."""
from __future__ import annotations

import numpy as np
import pytest
from conv_nets import conv_model

from segrank.errors import InputError, ModelError, SegrankError
from segrank.inference.blocks import Blocking, choose_blocking
from segrank.inference.session import CPU, CUDA, create_session
from segrank.models.description import Tiling


def test_cpu_session_reports_its_provider(tmp_path):
    model = conv_model(tmp_path / "m.onnx")
    session, provider = create_session(model, device="cpu", threads=1)
    assert provider == CPU and session.get_providers() == [CPU]


def test_cuda_is_used_or_refused_loudly(tmp_path):
    model = conv_model(tmp_path / "m.onnx")
    _, auto = create_session(model, device="auto", threads=1)
    if auto == CUDA:  # a machine with a working GPU
        _, provider = create_session(model, device="cuda")
        assert provider == CUDA
    else:
        assert auto == CPU
        with pytest.raises(SegrankError, match="--device cuda"):
            create_session(model, device="cuda")


def test_cuda_library_preload_keeps_stdout_clean(monkeypatch, capsys):
    """onnxruntime.preload_dlls prints what it cannot load; `--json` output must stay parseable."""
    import importlib.util

    import onnxruntime as ort

    from segrank.inference import session as session_module

    calls = []

    def noisy_preload(*args, **kwargs):
        calls.append(1)
        print("Failed to load libcublas.so.13")
        raise RuntimeError("no CUDA here")

    monkeypatch.setattr(ort, "preload_dlls", noisy_preload, raising=False)
    monkeypatch.setattr(session_module, "_PRELOADED", False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "nvidia" else real_find_spec(name, *a))
    session_module._preload_cuda_libraries(ort)
    session_module._preload_cuda_libraries(ort)  # once per process
    captured = capsys.readouterr()
    assert calls == [1]
    assert captured.out == "" and captured.err == ""


def test_bad_model_and_device(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    model = conv_model(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="bad.onnx"):
        create_session(model.with_(path=bad), device="cpu")
    with pytest.raises(ModelError, match="no input 'nope'"):
        create_session(model.with_(input_name="nope"), device="cpu")
    with pytest.raises(SegrankError, match="--device"):
        create_session(model, device="tpu")


def test_block_vocabulary():
    blocking = Blocking(shape=(10, 25), tile=(8, 12), halo=(1, 2))
    assert blocking.inner == (6, 8) and blocking.grid == (2, 4) and len(blocking) == 8
    covered = np.zeros((10, 25), int)
    for block in blocking:
        covered[block.inner] += 1
        assert tuple(s.stop - s.start for s in block.outer) == (8, 12)  # fixed tile shape
        read_shape = tuple(s.stop - s.start for s in block.read)
        assert tuple(r + a + b for r, (a, b) in zip(read_shape, block.padding)) == (8, 12)
        assert all(s.start <= i.start and i.stop <= s.stop for s, i in zip(block.outer, block.inner))
    np.testing.assert_array_equal(covered, 1)  # inner regions tile the image exactly once
    last = blocking.block((1, 3))
    assert last.inner == (slice(6, 10), slice(24, 25))
    assert last.origin == (5, 22) and last.padding == ((0, 3), (0, 9))
    assert last.inner_in_outer == (slice(1, 5), slice(2, 3))


def test_choose_blocking_follows_model_constraints(tmp_path):
    model = conv_model(tmp_path / "m.onnx", tiling=Tiling(multiple_of=(16, 16), minimum=(32, 32), halo=(8, 8)))
    big = choose_blocking(model, (2000, 3000))
    # 2000 = 5 blocks of <= 496 inner -> inner 400; 3000 = 7 blocks -> 429 -> tile 445 -> 448
    assert big.tile == (416, 448) and big.halo == (8, 8) and big.grid == (5, 7)
    small = choose_blocking(model, (20, 5))
    assert small.tile == (48, 32) and small.grid == (1, 1)  # shrunk to cover the image with its halo
    fixed = choose_blocking(model.with_(tiling=Tiling(fixed=(64, 64), halo=(8, 8))), (20, 5))
    assert fixed.tile == (64, 64)
    with pytest.raises(InputError, match="only accepts"):
        choose_blocking(model.with_(tiling=Tiling(fixed=(64, 64))), (100, 100), tile=128)
    slices = choose_blocking(model, (9, 100, 100), tile=(3, 64, 64))
    assert slices.tile == (3, 64, 64) and slices.halo == (0, 8, 8)
    model3d = conv_model(tmp_path / "m3.onnx", ndim=3)
    with pytest.raises(InputError, match="does not fit"):
        choose_blocking(model3d, (100, 100))


def test_session_cache_keeps_the_most_recent_sessions(tmp_path, monkeypatch):
    """cached_session reuses a session and evicts the least recently used beyond its bound, so
    a large bank (with grey-box rewrites) does not hold every session's memory at once."""
    import segrank.inference.session as session

    monkeypatch.setattr(session, "_CACHE", type(session._CACHE)())
    monkeypatch.setattr(session, "SESSION_CACHE_SIZE", 2)
    a, b, c = (conv_model(tmp_path / f"{n}.onnx", name=n) for n in "abc")
    first = session.cached_session(a, device="cpu", threads=1)
    assert session.cached_session(a, device="cpu", threads=1)[0] is first[0]
    session.cached_session(b, device="cpu", threads=1)
    session.cached_session(a, device="cpu", threads=1)  # a is now the most recent
    session.cached_session(c, device="cpu", threads=1)  # evicts b
    assert [k[0] for k in session._CACHE] == [str(a.path), str(c.path)]
    assert session.cached_session(a, device="cpu", threads=1)[0] is first[0]
    x = np.zeros((1, 1, 16, 16), np.float32)
    assert first[0].run(None, {a.input_name: x})[0].shape[-2:] == (16, 16)  # an evicted-or-not session still runs
