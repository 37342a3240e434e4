"""Inference backends behind one interface: the rest of the appliance never imports a runtime."""

from edge.inference.backend import Backend, ModelOutputs, open_backend

__all__ = ["Backend", "ModelOutputs", "open_backend"]
