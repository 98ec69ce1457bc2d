"""mvcap: multi-view markerless motion capture by dense displacement refinement."""

import os as _os

# torch and numba's renderer share GNU OpenMP; with its default busy-waiting, idle worker
# threads of one spin against the other on small machines (measured: a 40-iteration fit
# went from 0.6 s to 9 s on 2 cores). Passive waiting costs nothing here. Must be set
# before either library starts its thread pool.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
