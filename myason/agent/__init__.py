"""The flow agent: capture, decode, flow cache, export."""
