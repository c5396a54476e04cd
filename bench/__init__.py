"""The load generator: enumerates benchmark cells, runs each in its own process, records rows."""
