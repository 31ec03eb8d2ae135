"""shardkit.passes: pass infrastructure and built-in passes. Imports only shardkit.ir."""
