"""The gateway's routes, one `APIRouter` per concern; `gateway.app.create_app` includes them in order."""
