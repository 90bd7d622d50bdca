"""A Procore simulator for tests, the demo and benchmarks.

It behaves as `procore-api.md` describes, including the awkward parts: unstable order among equal
sort keys, ignored sort values, opaque file URLs on a storage host of their own that needs the
bearer token, signatures that expire, a redirect to an object store that refuses the token, two
rate-limit windows, and knobs for faults and for editing or deleting photos while a listing is
being paged.
"""

from syncer.simulator.data import Company, SimPhoto, generate_company
from syncer.simulator.server import Hosts, SimConfig, Simulator

__all__ = ["Company", "Hosts", "SimConfig", "SimPhoto", "Simulator", "generate_company"]
