"""Input decoding at the gateway (torch-free): uploaded bytes -> arrays a worker can encode.

``decode_image`` -> [C, H, W] float32 in [0, 1] at the model's size; ``decode_events`` ->
validated EVENT_DTYPE events; ``fit_to_sensor`` -> events on the model's sensor. Each raises the
typed errors of ``service.decoding.errors`` and ``workers.errors`` (400, 413, 415, 422), never
anything that becomes a 500.
"""

from service.decoding.events import DecodedEvents, decode_events, fit_to_sensor
from service.decoding.images import DecodedImage, decode_image, decoded_bytes

__all__ = ["DecodedEvents", "DecodedImage", "decode_events", "decode_image", "decoded_bytes", "fit_to_sensor"]
