"""facekd: knowledge distillation for face-recognition networks."""

__version__ = "0.1.0"
