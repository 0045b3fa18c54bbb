"""The API's routes, one router per topic; each module's build(ctx, auth) returns its APIRouter.

Routers are built per app (not at import) because some parameter limits come from the config
(e.g. /events' `limit` is capped by `events_limit`), and every route reads the app's Context.
Order of inclusion is the order of the OpenAPI document and of docs/api.md.
"""
from myason.api.routes import agents, events, flows, rollups, service

TOPICS = (flows, rollups, agents, events, service)
