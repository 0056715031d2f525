"""segrank's error types. A message is one line that names the file (or model) and the problem."""


class SegrankError(Exception):
    """Base class: any error segrank reports to a user without a traceback."""


class ModelError(SegrankError):
    """A model file or description cannot be used (corrupt ONNX, missing bottleneck, ...)."""


class InputError(SegrankError):
    """A target image or volume cannot be used (wrong axes, dtype, empty image, ...)."""


class PredictionError(SegrankError):
    """A model produced unusable output (NaN or infinite values, wrong shape)."""
