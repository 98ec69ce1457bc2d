"""Learned parts of mvcap: the displacement network (:mod:`.displacement`), its training
data (:mod:`.data`), training loop (:mod:`.train`) and the predictor that plugs it into
the refinement loop (:mod:`.predictor`)."""

from .displacement import DisplacementNet, NetConfig, displacement_loss, endpoint_error

__all__ = ["DisplacementNet", "NetConfig", "displacement_loss", "endpoint_error"]
