"""Refusals of the quantiser and of the quantised-checkpoint reader, raised before any compute."""

from __future__ import annotations

from shared.errors import Refusal


class QuantizationRefusal(Refusal):
    """A quantisation request or checkpoint that cannot succeed as asked."""


class InvalidQuantSpec(QuantizationRefusal):
    """An unknown method, an unsupported bit width, or options that contradict each other."""


class UnsupportedArchitecture(QuantizationRefusal):
    """A model family the methods do not know how to walk (only dense Llama-family decoders)."""


class UnsupportedLayer(QuantizationRefusal):
    """A decoder layer holding a module the method cannot quantise or fold scales into."""


class InvalidCalibration(QuantizationRefusal):
    """A calibration set AWQ or GPTQ cannot use (token ids outside the vocabulary)."""


class CalibrationTooSmall(InvalidCalibration):
    """Fewer calibration tokens than the method needs."""


class GroupSizeMismatch(QuantizationRefusal):
    """A group size that does not divide a layer's input dimension, or a dimension the layout cannot pack."""


class UnsupportedCheckpoint(QuantizationRefusal):
    """A quantised folder in a layout puyu does not read (another AWQ version, another packing)."""
