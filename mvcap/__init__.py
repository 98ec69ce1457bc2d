"""mvcap: multi-view markerless motion capture by dense displacement refinement.

Layers, lowest first (a module builds on its own line and the ones above it):

    core geometry   errors, config, frames, cameras, rigio, poses (joint limits), metrics
    body + fit      body, subject, render, correspond, displace, nets/, fit, fuse, refine
    I/O             capture (the session file), sources (camera videos / image folders), export
    capture prep    calibrate, ingest, detect, triangulate, initialize, register
    apps + synth    cli, pipeline, demo, report, overlay, bench; synth, synth_board, motions
"""

import os as _os

# torch and numba's renderer share GNU OpenMP; with its default busy-waiting, idle worker
# threads of one spin against the other on small machines (measured: a 40-iteration fit
# went from 0.6 s to 9 s on 2 cores). Passive waiting costs nothing here. Must be set
# before either library starts its thread pool.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
