"""Iris flowers: a third model, brought the way a user brings one (see tests/third_model/README.md)."""

from .model import Iris as MODEL

__all__ = ["MODEL"]
