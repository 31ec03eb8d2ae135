"""Dedicated op definitions. Importing this package registers them."""
from . import core, control_flow, lax, collectives  # noqa: F401
