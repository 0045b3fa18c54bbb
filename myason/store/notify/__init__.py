"""The notifier: an events writer that matches IDEA events against rules and sends webhooks and
e-mail digests (docs/notifier.md). `writer` registers it as `notify`; `rules` matches events,
`signing` signs webhook bodies, `webhook` and `mail` send, `state` keeps what waits in SQLite,
`dispatch` runs the deliveries beside the writer.
"""
