"""segrank: rank pre-trained segmentation models on unlabelled data by prediction consistency."""
from importlib.metadata import PackageNotFoundError, version as _version
from pathlib import Path as _Path

try:
    __version__ = _version("segrank")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"


def cmake_dir() -> str:
    """Folder holding segrankConfig.cmake, for `find_package(segrank)` from C++."""
    # The compiled module sits beside the installed CMake files, also in editable installs.
    from importlib.util import find_spec

    spec = find_spec("segrank._metrics")
    base = _Path(spec.origin).parent if spec and spec.origin else _Path(__file__).parent
    return str(base / "cmake" / "segrank")


# The public API, imported on first use so that `import segrank` (and the CLI) stays light.
_API = {
    "rank": ("segrank.job", "rank"),
    "evaluate": ("segrank.evaluate.job", "evaluate"),
    "validate": ("segrank.evaluate.job", "validate"),
    "baselines": ("segrank.evaluate.baselines", "baselines"),
    "compare": ("segrank.metrics.compare", "compare_arrays"),
    "load_model": ("segrank.models", "load_model"),
    "load_bank": ("segrank.models", "load_bank"),
    "predict_image": ("segrank.inference.predict", "predict_image"),  # one image -> numpy array
    "predict_target": ("segrank.inference.to_store", "predict_target"),  # a target -> Zarr (`segrank predict`)
    "open_target": ("segrank.io.targets", "open_target"),
}
# Older names that keep working: `segrank.predict` was the in-memory `predict_image`, which
# read as if it were the CLI's `segrank predict` (a target into a Zarr store).
_RENAMED = {"predict": "predict_image"}


def __getattr__(name):
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(f"segrank.{name} is segrank.{new} (the CLI's `segrank predict` is segrank.predict_target)",
                      DeprecationWarning, stacklevel=2)
        name = new
    if name in _API:
        from importlib import import_module

        module, attr = _API[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'segrank' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


__all__ = ["__version__", "cmake_dir", *_API]
