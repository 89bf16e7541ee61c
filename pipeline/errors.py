"""The exception types that mean "the user gave bad input" (one line, exit 2)."""
from control.types import ControlError
from nodes.device import DeviceError
from nodes.link import LinkError
from nodes.models.errors import ModelError
from schemas.codec import SchemaError


class PipelineError(ValueError):
    """Bad pipeline configuration (channel spec, broker URL, workload)."""


USER_ERRORS = (ControlError, ModelError, SchemaError, PipelineError, LinkError, DeviceError, FileNotFoundError)
