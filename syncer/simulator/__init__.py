"""A Procore simulator for tests, the demo and benchmarks.

It behaves as `procore-api.md` describes, including the awkward parts: unstable order among equal
sort keys, ignored sort values, signed URLs that expire behind a redirect to an object store that
refuses the bearer token, two rate-limit windows, and knobs for faults and for editing or deleting
photos while a listing is being paged.
"""

from syncer.simulator.data import Company, SimPhoto, generate_company
from syncer.simulator.server import SimConfig, Simulator

__all__ = ["Company", "SimConfig", "SimPhoto", "Simulator", "generate_company"]
