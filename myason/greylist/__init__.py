"""The greylist pushed to a firewall: an nftables script or an ipset restore file of the sources of
stored events, applied by a configured command whenever it changes (docs/greylist.md)."""
