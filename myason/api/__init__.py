"""The query API (`myason api`): Docket-style flow search, traffic, top lists, events and health over HTTP."""
