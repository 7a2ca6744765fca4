"""The web stack's ceiling: the same gunicorn settings serving a trivial JSON echo."""

from flask import Flask, request

app = Flask(__name__)


@app.post("/identify")
def echo():
    """Answer with the body that came in."""
    return {"contact": request.get_json()}


@app.get("/healthz")
def healthz():
    """Lets the bench see that the server is up."""
    return {"status": "ok"}
