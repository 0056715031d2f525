"""ONNX Runtime sessions: provider choice that never falls back silently, one session per process.

``device="auto"`` takes CUDA only when a session on it really runs (a probe inference);
``device="cuda"`` raises instead of falling back; the provider actually used is returned.
Sessions hold native state and are never pickled: workers get theirs from `cached_session`,
a per-process cache (ONNX Runtime's ``run`` is thread-safe, so threads share one session).
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import math
import os
import threading

import numpy as np

from ..errors import ModelError, SegrankError
from ..models.description import Model

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# This process's sessions, least recently used first. Bounded: a bank of 50 models with their
# grey-box rewrites would otherwise keep ~150 sessions (and their GPU memory arenas) alive.
_CACHE: collections.OrderedDict[tuple, tuple[object, str]] = collections.OrderedDict()
SESSION_CACHE_SIZE = int(os.environ.get("SEGRANK_SESSION_CACHE", "8"))
# Why CUDA cannot be used in this process, once a provider load has failed (None: not known).
_CUDA_BROKEN: str | None = None
_CACHE_LOCK = threading.Lock()


def _options(threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: failed CUDA probes are reported by us, once
    # no CPU arena: it keeps the high-water mark of every concurrent run for good, so peak
    # memory would grow with the number of dask threads (benchmarks/inference.py)
    opts.enable_cpu_mem_arena = False
    # park the intra-op threads when a run returns: a session's threads that go on spinning
    # after its run take the cores from the next model's session (a race alternates models;
    # +18 % on the example without this, benchmarks/race_overhead.py)
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if threads is not None:
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
    return opts


def probe_input(model: Model, session) -> dict[str, np.ndarray]:
    """A small valid feed (zeros) for `session`: the model's minimal tile, batch 1."""
    spatial = []
    tiling = model.tiling
    for i in range(model.ndim):
        if tiling.fixed:
            spatial.append(int(tiling.fixed[i]))
            continue
        minimum = int(tiling.minimum[i]) if tiling.minimum else 16
        multiple = int(tiling.multiple_of[i]) if tiling.multiple_of else 1
        spatial.append(max(1, math.ceil(max(minimum, 16) / max(multiple, 1)) * max(multiple, 1)))
    sizes = dict(zip(model.spatial_axes, spatial), b=1, c=model.in_channels)
    feeds = {model.input_name: np.zeros([sizes[a] for a in model.axes], dtype=np.float32)}
    if model.dropout_input:
        mask_shape = [1, int(model.dropout_channels or 1)] + [1] * model.ndim
        feeds[model.dropout_input] = np.ones(mask_shape, dtype=np.float32)
    return feeds


_PRELOADED = False


def _preload_cuda_libraries(ort) -> None:
    """Load CUDA/cuDNN from nvidia-* Python packages (e.g. beside a CUDA PyTorch), once per process.

    Only where such packages exist; onnxruntime prints what it cannot find on stdout, which
    would corrupt `--json` output, so that is swallowed (a CUDA session that still cannot load
    is reported by `create_session` in its own words).
    """
    global _PRELOADED
    if _PRELOADED or not hasattr(ort, "preload_dlls") or importlib.util.find_spec("nvidia") is None:
        return
    _PRELOADED = True
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ort.preload_dlls()
        except Exception:  # a partial CUDA install: the session's own load error says more
            pass


def create_session(model: Model, *, device: str = "auto", threads: int | None = None):
    """An ONNX Runtime session for `model` on `device`.

    Parameters
    ----------
    model : Model
    device : {"auto", "cpu", "cuda"}
        auto: CUDA when the CUDA provider loads and a probe inference runs on it, else CPU.
        cuda: CUDA or a `SegrankError` saying why not.
    threads : int, optional
        Intra-op threads (default: ONNX Runtime's, one per core). Lower it when several
        sessions or dask threads share the machine.

    Returns
    -------
    session : onnxruntime.InferenceSession
    provider : str
        The provider that runs the model ("CUDAExecutionProvider" or "CPUExecutionProvider").
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise SegrankError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    path = str(model.path)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: model file not found")
    if device in ("auto", "cuda"):
        global _CUDA_BROKEN
        reason = _CUDA_BROKEN
        if reason is None and CUDA not in ort.get_available_providers():
            reason = _CUDA_BROKEN = f"this onnxruntime ({ort.__version__}) has no CUDA provider"
        if reason is None:
            try:
                # ONNX Runtime logs a failed provider load as an error on stderr, for every
                # session; we say it once, in our own words, and remember it for this process.
                ort.set_default_logger_severity(4)
                try:
                    _preload_cuda_libraries(ort)
                    # TF32 convolutions differ from the CPU path by ~1e-3; full float32 keeps
                    # scores provider-independent up to float rounding.
                    session = ort.InferenceSession(path, _options(threads),
                                                   providers=[(CUDA, {"use_tf32": "0"}), CPU])
                finally:
                    ort.set_default_logger_severity(2)
                if session.get_providers()[0] != CUDA:
                    reason = _CUDA_BROKEN = "the CUDA provider did not load (no GPU, or CUDA/cuDNN libraries missing)"
                else:
                    session.run([model.output_name], probe_input(model, session))
                    return session, CUDA
            except Exception as err:  # onnxruntime raises plain RuntimeError/Fail types
                reason = f"a probe run on CUDA failed: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
        if device == "cuda":
            raise SegrankError(f"{path}: --device cuda requested but {reason}")
    try:
        session = ort.InferenceSession(path, _options(threads), providers=[CPU])
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: ONNX Runtime cannot load the model: {first}") from None
    names = {i.name for i in session.get_inputs()}
    if model.input_name not in names:
        raise ModelError(f"{path}: the graph has no input {model.input_name!r} (inputs: {', '.join(sorted(names))})")
    if model.dropout_input and model.dropout_input not in names:
        raise ModelError(f"{path}: the graph has no dropout-mask input {model.dropout_input!r}")
    outputs = {o.name for o in session.get_outputs()}
    if model.output_name not in outputs:
        raise ModelError(f"{path}: the graph has no output {model.output_name!r} (outputs: {', '.join(sorted(outputs))})")
    return session, CPU


def cached_session(model: Model, *, device: str = "auto", threads: int | None = None):
    """This process's session for (model file, device, threads), created once and reused.

    The most recently used ``SEGRANK_SESSION_CACHE`` sessions (default 8) are kept; tasks come
    model by model, so an older one is rarely needed again.
    """
    key = (str(model.path), os.path.getmtime(model.path) if os.path.exists(model.path) else None, device, threads)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        _CACHE[key] = entry = create_session(model, device=device, threads=threads)
        # a run in flight keeps its own reference, so eviction never breaks it
        while len(_CACHE) > max(1, SESSION_CACHE_SIZE):
            _CACHE.popitem(last=False)
        return entry


def default_threads(workers: int) -> int:
    """Intra-op threads per session so that `workers` concurrent runs fill, not oversubscribe, the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def provider_note(provider: str, device: str) -> str | None:
    """A line for stderr when auto chose the CPU."""
    if device == "auto" and provider == CPU:
        return "segrank: CUDA not usable here; running on CPUExecutionProvider"
    return None


class TileRunner:
    """Runs one model input through a session: IO binding on CUDA, plain ``run`` on CPU."""

    def __init__(self, model: Model, session, provider: str | None = None):
        self.model = model
        self.session = session
        self.provider = provider or session.get_providers()[0]

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        feeds = {self.model.input_name: x}
        if mask is not None:
            feeds[self.model.dropout_input] = mask
        if self.provider == CUDA:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            # the output stays on the GPU until copied once; no intermediate host buffers
            binding.bind_output(self.model.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.model.output_name], feeds)[0]


__all__ = ["CPU", "CUDA", "DEVICES", "TileRunner", "cached_session", "create_session", "default_threads"]
