"""YOLOv3 object detection as a web service."""

__version__ = "0.1.0"
