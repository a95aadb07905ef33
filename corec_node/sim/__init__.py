"""Deterministic simulator of a CoreC mesh: the real sans-I/O cores over a virtual network.

    from corec_node.sim import Cluster, NetworkConfig
    c = Cluster(50, seed=7, network=NetworkConfig(loss=0.05))
    c.bootstrap()
    c.await_convergence(within=30)
    c.crash(c.leaders()[0]); c.await_convergence(within=30)

Same seed, same run. See cluster.py for what is simulated and how.
"""

from corec_node.sim.cluster import Cluster, SimNode
from corec_node.sim.faults import FaultPlan, random_faults
from corec_node.sim.invariants import Invariants, InvariantViolation
from corec_node.sim.network import Network, NetworkConfig

__all__ = [
    "Cluster",
    "FaultPlan",
    "InvariantViolation",
    "Invariants",
    "Network",
    "NetworkConfig",
    "SimNode",
    "random_faults",
]
