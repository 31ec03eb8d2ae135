"""shardkit.federated: federated primitives with federated autodiff, sharded over a device mesh.

    import shardkit.federated as fed

    @fed.program(placements={"clients": 8}, mesh=mesh)
    def round(params, data, weights):
        local = fed.map(client_update, (fed.broadcast(params), data))
        return fed.weighted_mean(local, weights)

`broadcast` (server to placement), `sum`, `mean`, `weighted_mean` (placement to server) and `map`
(once per member) are JAX primitives: jit, grad, jvp, vjp, jacfwd/jacrev and vmap all work through
them, and after differentiation the jaxpr still shows the federated communication. `sk.capture`
keeps them as IR ops, with `map`'s per-member computation as a region; `interpret` runs such a graph
as a plain loop over members with NumPy.
"""
from .api import broadcast, map, mean, sum, weighted_mean  # noqa: A004
from .context import Placement, program
from .errors import FederatedError
from . import ops as _ops  # noqa: F401  (registers the IR op definitions)
from .reference import Placed, ReferenceExecutor, interpret
from .primitives import broadcast_p, map_p, mean_p, sum_p, weighted_mean_p

__all__ = ["FederatedError", "Placed", "Placement", "ReferenceExecutor", "broadcast", "broadcast_p", "interpret",
           "map", "map_p", "mean", "mean_p", "program", "sum", "sum_p", "weighted_mean", "weighted_mean_p"]
