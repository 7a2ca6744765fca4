"""The HTTP API: validate, call the repository, answer."""

from flask import Blueprint, request

from identity import db, repository
from identity.schemas import IdentifyRequest

bp = Blueprint("api", __name__)
identify_request = IdentifyRequest()


@bp.post("/identify")
def identify():
    """Link the checkout's contact details into one customer and answer with that customer."""
    wanted = identify_request.load(request.get_json())
    outcome = db.run(repository.identify, wanted["email"], wanted["phone_number"])
    return {"contact": outcome.contact}


@bp.get("/healthz")
def healthz():
    """Alive while the process serves."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Ready while the database answers."""
    db.run(repository.ping)
    return {"status": "ready"}
