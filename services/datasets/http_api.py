"""The commit endpoint: `POST /commit` asks the consumer to commit the waiting labels now and answers with the
version (`{"version": id, "items": n, "appended": true}`, or `{"version": null}` when nothing waited). Behind a
bearer token (role "commit") whenever one is set; required off loopback."""
from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from libs.common.http import HttpServer, TokenAuth, json_app, protect, require_token_off_loopback
from services.datasets.labels_intake import LabelIntake

COMMIT_WAIT_S = 60.0


def commit_app(intake: LabelIntake, token: str | None, wait_s: float = COMMIT_WAIT_S):
    auth = TokenAuth({token: {"commit"}}) if token else None

    def commit(_request: Request) -> JSONResponse:  # blocks: runs on a worker thread
        waiting = intake.waiting
        done, manifest = intake.request_commit(wait_s)
        if not done:
            raise HTTPException(504, f"the consumer did not commit within {wait_s:g}s ({waiting} labels waiting)")
        if manifest is None:
            return JSONResponse({"dataset": intake.dataset, "branch": intake.branch, "version": None})
        return JSONResponse({"dataset": intake.dataset, "branch": intake.branch, "version": manifest.version,
                             "items": len(manifest.items), "parents": list(manifest.parents)})

    return json_app([Route("/commit", protect(commit, auth, "commit"), methods=["POST"])], max_body_bytes=1024)


def start_commit_server(intake: LabelIntake, host: str, port: int, token: str | None) -> HttpServer:
    require_token_off_loopback(host, token, "VIGIL_DATASETS_COMMIT_TOKEN")
    return HttpServer(commit_app(intake, token), host, port, name="datasets-commit").start()
