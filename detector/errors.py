"""One root exception for everything a user can get wrong.

The CLI catches :class:`DetectorError` and prints ``str(exc)`` as a single line
with a non-zero exit code; anything else is a bug and keeps its traceback.
"""


class DetectorError(Exception):
    """Base class: the message is one line that names the problem and the fix."""

    exit_code = 2


class ConfigError(DetectorError):
    """Invalid configuration file or command-line value."""


class ModelError(DetectorError):
    """Model file missing, not ONNX, or without the metadata contract."""


class AudioError(DetectorError):
    """Unreadable, corrupt or unusable audio input."""


class DeviceError(DetectorError):
    """Audio device missing or unusable."""


class BrokerError(DetectorError):
    """MQTT broker settings or connection problem that stops startup."""


class DataLossError(DetectorError):
    """The run ended, but events were lost on the way (e.g. a full disk)."""

    exit_code = 3
