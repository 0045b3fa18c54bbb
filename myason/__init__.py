"""myason: network flow monitoring (agent, collector, viewers)."""
__version__ = "0.1.0"
