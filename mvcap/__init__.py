"""mvcap: multi-view markerless motion capture by dense displacement refinement."""

__version__ = "0.1.0"
