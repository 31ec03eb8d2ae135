"""Dedicated op definitions. Importing this package registers them."""
from . import core, control_flow  # noqa: F401
