"""`rnn serve`: the exported models over HTTP (FastAPI on uvicorn), with a page to try them.

- ``GET /health``: up, and how many models are served.
- ``GET /models``: each model's name, stage, version, perplexities and shape.
- ``POST /generate``: ``{"model", "prefix", "length", "temperature", "top_k", "seed"}``; the text
  is streamed (``text/plain``) as each token is chosen, the prefix first, exactly what
  ``rnn generate`` prints for the same arguments.
- ``GET /``: the page (``page.html``): one prefix, every model's continuation side by side.

A bad request gets a 4xx and one line of JSON, ``{"error": "..."}``. With a token (the
``RNN_SERVE_TOKEN`` environment variable: a secret stays off the command line), every endpoint but
``/health`` and the page wants ``Authorization: Bearer <token>``.

The served set follows its source (``ModelSet.refresh``, every few seconds): a model whose export
changed is loaded (verified) and swapped in, and a request already streaming keeps the model it
started with, so nothing in flight is dropped or mixed.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rnn.data.tokens import prefix_ids
from rnn.errors import PipelineError
from rnn.serving.runtime import OnnxModel

TOKEN_ENV = "RNN_SERVE_TOKEN"
FLUSH_S = 0.02  # a streamed chunk at least this often: live to a reader


@dataclass(frozen=True)
class Source:
    """Where one served model's export is, the stage and version it is served as, and what
    names its content (unchanged content is not loaded again)."""

    name: str
    directory: Path
    stage: str
    version: str
    content: str


@dataclass(frozen=True)
class Served:
    source: Source
    model: OnnxModel

    def describe(self) -> dict:
        m = self.model.manifest
        return {
            "name": self.source.name,
            "stage": self.source.stage,
            "version": self.source.version,
            "perplexity": m.get("perplexity", {}),
            "run": m["run"],
            "backend": m.get("backend"),
            "variant": m.get("variant"),
            "cell": m["cell"],
            "num_layers": m["num_layers"],
            "num_hiddens": m["num_hiddens"],
            "vocab_size": m["vocab_size"],
            "token_type": m.get("token_type", "char"),
        }


def workspace_sources(models: Path, log: Callable[[str], None]) -> Callable[[], list[Source]]:
    """The ONNX bundle of every trained run under ``models`` (a workspace's data/models/), each
    checked against its run's record; its version the first 12 hex digits of its weights'
    checksum."""
    from rnn.export.bundle import verified_bundle
    from rnn.store.record import RECORD_FILE

    refused: set[str] = set()

    def sources() -> list[Source]:
        found = []
        for record in sorted(models.glob(f"*/{RECORD_FILE}")):
            try:
                bundle = verified_bundle(record.parent)
            except PipelineError as err:
                if str(err) not in refused:  # once, not at every refresh
                    refused.add(str(err))
                    log(f"not serving {record.parent.name}: {err}")
                continue
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-replaced: the next refresh sees it whole
            weights = bundle.manifest["source"]["weights_sha256"]
            name = record.parent.name
            found.append(Source(name, bundle.path, "workspace", weights[:12], bundle.sha256))
        return found

    return sources


def registry_sources(
    origin: str, stage: str, cache: Path, log: Callable[[str], None]
) -> Callable[[], list[Source]]:
    """The models whose ``stage`` is assigned in ``origin``'s registry, each fetched (from the
    DVC remote) into ``cache`` once per version."""
    from rnn.serving.fetch import fetch_at, stage_holders

    bundles: dict[tuple[str, str], Path] = {}

    def sources() -> list[Source]:
        found = []
        for name, holder in stage_holders(origin, stage).items():
            key = (name, holder.commit)
            if key not in bundles:
                try:
                    bundles[key] = fetch_at(
                        origin, name, holder.commit, cache / name / holder.commit
                    )
                except PipelineError as err:
                    log(f"not serving {name} {holder.version}: {err}")
                    continue
            found.append(Source(name, bundles[key], stage, holder.version, holder.commit))
        return found

    return sources


class ModelSet:
    """The served models by name. ``refresh`` loads what changed and swaps the whole mapping in
    one assignment, so a reader sees the old set or the new one, never a mix."""

    def __init__(self, sources: Callable[[], list[Source]], log: Callable[[str], None]) -> None:
        self.sources, self.log = sources, log
        self._models: dict[str, Served] = {}
        self._refreshing = threading.Lock()

    def refresh(self) -> None:
        with self._refreshing:
            try:
                sources = self.sources()
            except (PipelineError, OSError) as err:  # origin away: serve what is loaded
                self.log(f"kept the served models: {err}")
                return
            current, fresh = self._models, {}
            for source in sources:
                old = current.get(source.name)
                if old is not None and old.source == source:
                    fresh[source.name] = old
                    continue
                try:
                    fresh[source.name] = Served(source, OnnxModel(source.directory))
                except (PipelineError, OSError, ValueError) as err:
                    self.log(f"not serving {source.name} {source.version}: {err}")
                    if old is not None:
                        fresh[source.name] = old
                    continue
                self.log(f"serving {source.name} ({source.stage}, version {source.version})")
            self._models = fresh

    def get(self, name: str) -> Served | None:
        return self._models.get(name)

    def all(self) -> list[Served]:
        return list(self._models.values())


def page() -> str:
    return resources.files("rnn.serving").joinpath("page.html").read_text(encoding="utf-8")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    prefix: str
    length: int = Field(100, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_k: int = Field(0, ge=0)
    seed: int = 0


class Refused(Exception):
    """A request refused with ``status`` and one line saying why."""

    def __init__(self, status: int, line: str) -> None:
        self.status, self.line = status, line


def create_app(models: ModelSet, max_length: int, token: str | None, reload_s: float = 2.0):
    """The FastAPI application over ``models``, refreshing them every ``reload_s`` seconds."""

    @asynccontextmanager
    async def lifespan(_app):
        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(reload_s):
                models.refresh()

        follower = threading.Thread(target=follow, name="rnn-serve-refresh", daemon=True)
        follower.start()
        yield
        stop.set()

    app = FastAPI(title="rnn serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Refused(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    @app.exception_handler(Refused)
    async def refused(_request, err: Refused):
        return JSONResponse({"error": err.line}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, err: RequestValidationError):
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
        if tuple(first.get("loc", ())) == ("body",):
            line = "the body must be a JSON object (Content-Type: application/json)"
            return JSONResponse({"error": line}, status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where or 'body'}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": len(models.all())}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page()

    @app.get("/models", dependencies=[Depends(authorized)])
    def list_models() -> list[dict]:
        return [s.describe() for s in sorted(models.all(), key=lambda s: s.source.name)]

    @app.post("/generate", dependencies=[Depends(authorized)])
    def generate(req: GenerateRequest):
        served = models.get(req.model)
        if served is None:
            known = ", ".join(s.source.name for s in models.all()) or "none"
            raise Refused(404, f"unknown model {req.model!r}; served: {known}")
        if req.length > max_length:
            raise Refused(422, f"length {req.length} is over this server's limit of {max_length}")
        try:
            prefix_ids(served.model.vocab, req.prefix)  # refused before the stream starts
        except PipelineError as err:
            raise Refused(422, str(err)) from None
        pieces = served.model.stream_text(
            req.prefix, req.length, req.temperature, req.top_k, req.seed
        )
        headers = {"X-Model-Version": served.source.version, "X-Model-Stage": served.source.stage}
        return StreamingResponse(
            _chunks(pieces), media_type="text/plain; charset=utf-8", headers=headers
        )

    return app


def _chunks(pieces: Iterator[str], flush_s: float = FLUSH_S) -> Iterator[bytes]:
    """The prefix at once, then what was generated in each ``flush_s``: a token per chunk would
    cost a hand-off between threads and an HTTP chunk per character, ten times the generation."""
    buffered: list[str] = []
    last = time.perf_counter()
    for index, piece in enumerate(pieces):
        buffered.append(piece)
        now = time.perf_counter()
        if index == 0 or now - last >= flush_s:
            yield "".join(buffered).encode("utf-8")
            buffered, last = [], now
    if buffered:
        yield "".join(buffered).encode("utf-8")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_token(host: str, token: str | None, require: bool) -> None:
    """A server reachable from other machines wants a token; on 127.0.0.1 only when asked."""
    if token is None and host not in LOOPBACK:
        raise PipelineError(
            f"serving on {host} without a token would let anyone who reaches it use the models",
            f"set {TOKEN_ENV} in the environment, or listen on 127.0.0.1",
        )
    if token is None and require:
        raise PipelineError("--require-token without a token", f"set {TOKEN_ENV}")


def serve_exports(
    sources: Callable[[], list[Source]],
    host: str,
    port: int,
    max_length: int,
    token: str | None,
    reload_s: float,
    log: Callable[[str], None],
) -> None:
    """Serve until interrupted."""
    import uvicorn

    models = ModelSet(sources, log)
    models.refresh()
    if not models.all():
        raise PipelineError(
            "no exported model to serve", "train (`dvc repro`) or export (`rnn export`) first"
        )
    log(f"listening on http://{host}:{port} ({len(models.all())} models)")
    app = create_app(models, max_length, token, reload_s)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
