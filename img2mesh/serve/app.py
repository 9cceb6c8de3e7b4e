"""The HTTP side of ``img2mesh serve``: the JSON API, live progress as server-sent events, the page, the docs.

Every error a client can cause is answered with a status code and one sentence in ``detail`` that names the problem
and the fix: a photo that is not an image or is empty (422), an upload over the server's limit (413, checked while
the body arrives, so an oversize upload is never stored), an unknown option or a wrong value (422, with the sentence
the command line gives for the same config key), an unknown job or file (404), a missing or wrong token (401). A job
that fails keeps its sentence in its ``error`` field and the server goes on with the next.

With a token set, every route but ``/api/health`` needs it: as ``Authorization: Bearer TOKEN`` (API clients), or
as the cookie that opening ``/?token=TOKEN`` sets once in a browser (the page, its downloads, its event streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from img2mesh import __version__
from img2mesh.errors import InputError
from img2mesh.pipeline import Img2Mesh
from img2mesh.serve.files import FILES, JOB_ID, ZIP_NAME, available, find_file, zip_folder
from img2mesh.serve.options import job_config, parse_options
from img2mesh.serve.store import Job, JobStore
from img2mesh.serve.worker import UPLOADS_DIR, JobWorker, clean_leftovers

#: Cookie that carries the token in a browser.
TOKEN_COOKIE = "img2mesh_token"

#: Multipart field of the photo.
PHOTO_FIELD = "photo"

#: Bytes of multipart framing and option fields allowed on top of the photo limit.
FORM_SLACK = 64 * 1024

#: Seconds between two looks at a job for its event stream.
EVENT_PERIOD = 0.25


@dataclass
class ServeSettings:
    """What ``img2mesh serve`` was started with."""

    root: Path
    """Folder of the job folders, ``jobs.sqlite``, ``uploads/``."""
    config_source: str | None = None
    """``--config``: preset name or YAML file; None for the defaults."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """The server's own options and ``--set`` values on top of it."""
    token: str | None = None
    """Bearer token every route but the health check needs; None: no token."""
    max_upload_mb: float = 20.0
    """Largest accepted upload, in MB (10^6 bytes)."""
    cpu_workers: int | None = None
    """CPU worker processes of the batch runner (None: its default)."""
    warm_up: bool = True
    """Run one warm-up job before the first real one."""


class JobView(BaseModel):
    """A job as the API shows it."""

    id: str = Field(description="Job id: 16 hex digits.")
    name: str = Field(description="File name of the uploaded photo.")
    state: str = Field(description="queued, running, done or failed.")
    stage: str | None = Field(
        description="A running job's stage: prepare_input, generate_views, pose_views, fit or write."
    )
    progress: float = Field(description="Share done, 0 to 1 (within a stage estimated from the last finished job).")
    timings: dict[str, float] = Field(description="Seconds per stage of a finished job, as in its run.json.")
    error: str | None = Field(description="Why a failed job failed, in one sentence.")
    options: dict[str, Any] = Field(description="The config keys the job was submitted with.")
    files: list[str] = Field(description="Names available under /api/jobs/{id}/files/ now.")
    created: str
    started: str | None
    finished: str | None


class Health(BaseModel):
    """Whether the server takes jobs."""

    status: str = Field(description="ok (model loaded and warm), loading, or error.")
    error: str | None = Field(description="Why the model could not be loaded.")
    model: str
    device: str | None
    queued: int
    running: int
    version: str


class UploadLimit:
    """Pure ASGI middleware: refuses a job upload larger than the limit (413) before or while it arrives."""

    def __init__(self, app, limit_bytes: int) -> None:
        self.app = app
        self.limit = limit_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/jobs":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit + FORM_SLACK:
            await self._refuse(scope, receive, send)
            return
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit + FORM_SLACK:
                await self._refuse(scope, receive, send)
                return
            body.append(chunk)
            more = message.get("more_body", False)
        whole = b"".join(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        megabytes = self.limit / 1e6
        detail = f"The upload is larger than this server's limit of {megabytes:g} MB; send a smaller photo "
        detail += "(or start the server with a larger --max-upload-mb)."
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


def create_app(
    settings: ServeSettings,
    pipeline: type[Img2Mesh] = Img2Mesh,
    should_abort: Callable[[], bool] = lambda: False,
) -> FastAPI:
    """The server's ASGI app. Its lifespan opens the job store and starts the job runner (the model loads in the
    background; ``/api/health`` says when it is ready); on shutdown it finishes the jobs in flight, unless
    ``should_abort`` turns true (a second Ctrl-C), and leaves the queued ones for the next start."""
    from img2mesh.config import load_config

    root = settings.root
    base_config = load_config(settings.config_source, settings.overrides)
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        root.mkdir(parents=True, exist_ok=True)
        (root / UPLOADS_DIR).mkdir(exist_ok=True)
        clean_leftovers(root)
        store = JobStore(root)
        store.requeue_running()
        worker = JobWorker(
            root,
            store,
            base_config,
            settings.config_source,
            settings.overrides,
            pipeline=pipeline,
            cpu_workers=settings.cpu_workers,
            warm_up=settings.warm_up,
        )
        state.update(store=store, worker=worker)
        worker.start()
        try:
            yield
        finally:
            worker.request_stop()
            while worker.alive() and not should_abort():
                await asyncio.sleep(0.1)
            if not worker.alive():
                worker.join()
                store.close()

    docs_url = None  # served below with the shipped Swagger UI files, so /docs works offline
    app = FastAPI(
        title="img2mesh",
        version=__version__,
        description="One photo of an object in, a textured 3D mesh out. Jobs run one after another on a warm model.",
        lifespan=lifespan,
        docs_url=docs_url,
        redoc_url=None,
    )
    app.add_middleware(UploadLimit, limit_bytes=int(settings.max_upload_mb * 1e6))
    static = resources.files("img2mesh.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def store() -> JobStore:
        return state["store"]

    def worker() -> JobWorker:
        return state["worker"]

    def job_or_404(job_id: str) -> Job:
        job = store().get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, f"There is no job {job_id!r}; GET /api/jobs lists the jobs.")
        return job

    def view(job: Job) -> JobView:
        files = available(root / job.id, worker().live_folder(job.id)) if job.state != "queued" else []
        data = {k: getattr(job, k) for k in JobView.model_fields if hasattr(job, k)}
        return JobView(**data, progress=worker().progress(job), files=files)

    # ------------------------------------------------------------------------------------------- auth, errors

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if settings.token is None or request.url.path == "/api/health":
            return await call_next(request)
        given = request.query_params.get("token")
        if request.url.path == "/" and given is not None and secrets.compare_digest(given, settings.token):
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar and history
            response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
            return response
        header = request.headers.get("authorization", "")
        supplied = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
        if secrets.compare_digest(supplied.encode(), settings.token.encode()):
            return await call_next(request)
        detail = (
            "This server needs its token: send the header 'Authorization: Bearer TOKEN', "
            "or open /?token=TOKEN in the browser once."
        )
        return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(StarletteHTTPException)
    async def routing_errors(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is nothing at {request.url.path}; see /docs for the API's routes."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the API's routes."
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def one_sentence(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        detail = f"The request is not valid ({'; '.join(problems)}); see /docs for the expected fields."
        return JSONResponse({"detail": detail}, status_code=422)

    # ------------------------------------------------------------------------------------------------ the API

    @app.post("/api/jobs", status_code=201, response_model=JobView, tags=["jobs"])
    async def submit(request: Request, photo: UploadFile = File(description="The photo: PNG, JPEG or WebP.")):
        """Queue one photo. Other form fields are options named like config keys (``multiview.steps``,
        ``mesh.faces``, ``runtime.seed``, ...), each value read as YAML like ``--set KEY=VALUE``."""
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if k != PHOTO_FIELD}
        not_text = [k for k, v in fields.items() if not isinstance(v, str)]
        if not_text:
            raise HTTPException(422, f"Field {not_text[0]!r} is a file; send one photo per job, as 'photo'.")
        try:
            options = parse_options(fields)
            job_config(worker().config, settings.config_source, settings.overrides, options, fields)
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        data = await photo.read()
        name = Path(photo.filename or "photo").name or "photo"
        if not data:
            raise HTTPException(422, f"The photo {name!r} is empty (0 bytes); choose an image file.")
        job_id = uuid.uuid4().hex[:16]
        await asyncio.to_thread(_save_upload, root / UPLOADS_DIR, job_id, name, data)
        job = Job(id=job_id, name=name, options=options)
        store().add(job)
        worker().submit(job_id)
        return view(job)

    @app.get("/api/jobs", response_model=list[JobView], tags=["jobs"])
    async def list_jobs():
        """Every job, newest first."""
        return [view(job) for job in store().jobs()]

    @app.get("/api/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    async def get_job(job_id: str):
        """One job: state, stage, progress, seconds per stage, the error sentence, the files it has."""
        return view(job_or_404(job_id))

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse)
    async def job_events(job_id: str, request: Request):
        """Server-sent events: the job (as ``GET /api/jobs/{id}``) each time it changes, until it is done or
        failed."""
        job_or_404(job_id)

        async def events() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                job = store().get(job_id)
                if job is None:
                    yield "event: deleted\ndata: {}\n\n"
                    return
                current = view(job).model_dump_json()
                if current != last:
                    last = current
                    yield f"data: {current}\n\n"
                if job.state in ("done", "failed"):
                    return
                await asyncio.sleep(EVENT_PERIOD)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.get("/api/jobs/{job_id}/files/{name}", tags=["jobs"])
    async def get_file(job_id: str, name: str):
        """A file of the job: ``mesh.glb``, ``views.png``, ``input.png``, ``preview.png``, ``transforms.json``,
        ``run.json`` (``mesh.obj``/``mesh.ply`` with those formats), or ``folder.zip``, the whole folder."""
        job = job_or_404(job_id)
        folder = root / job.id
        if name == ZIP_NAME:
            if job.state != "done":
                raise HTTPException(404, f"Job {job_id} is {job.state}; its folder can be downloaded once it is done.")
            stem = Path(job.name).stem or job.id
            data = await asyncio.to_thread(zip_folder, folder, stem)
            disposition = f'attachment; filename="{_ascii(stem)}.zip"'
            return Response(data, media_type="application/zip", headers={"Content-Disposition": disposition})
        path = find_file(folder, worker().live_folder(job.id), name)
        if path is None:
            names = ", ".join([*FILES, ZIP_NAME])
            raise HTTPException(404, f"Job {job_id} has no file {name!r} (now); files are named {names}.")
        return FileResponse(path, media_type=FILES[name], headers={"Cache-Control": "no-store"})

    @app.delete("/api/jobs/{job_id}", status_code=204, tags=["jobs"])
    async def delete_job(job_id: str):
        """Delete a queued or finished job and its folder (a running one: once it has finished)."""
        job = job_or_404(job_id)
        if job.state == "running":
            raise HTTPException(409, f"Job {job_id} is running; delete it once it is done or failed.")
        store().delete(job_id)
        await asyncio.to_thread(_remove_job_files, root, job_id)
        return Response(status_code=204)

    @app.get("/api/health", response_model=Health, tags=["server"])
    async def health():
        """Whether the model is loaded and warm, and how many jobs wait."""
        w = worker()
        status = "error" if w.error else "ok" if w.ready.is_set() else "loading"
        device = str(w.config.runtime.device)
        counts = {s: len(store().jobs(s)) for s in ("queued", "running")}
        return Health(
            status=status, error=w.error, model=w.config.multiview.model, device=device, version=__version__, **counts
        )

    # ------------------------------------------------------------------------------------------ page and docs

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((static / "index.html").read_text())

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="img2mesh API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    return app


def _save_upload(folder: Path, job_id: str, name: str, data: bytes) -> None:
    """Write the upload as ``<id><suffix>`` and check that it is a photo img2mesh reads; raises 422 if not."""
    from img2mesh.cutout import load_image

    suffix = Path(name).suffix.lower()
    path = folder / f"{job_id}{suffix if suffix in ('.png', '.jpg', '.jpeg', '.webp') else '.img'}"
    partial = folder / f".{path.name}.partial"
    partial.write_bytes(data)
    try:
        load_image(partial)
    except InputError as exc:
        partial.unlink()
        raise HTTPException(422, str(exc).replace(str(partial), repr(name))) from None
    partial.replace(path)


def _remove_job_files(root: Path, job_id: str) -> None:
    import shutil

    shutil.rmtree(root / job_id, ignore_errors=True)
    for upload in (root / UPLOADS_DIR).glob(f"{job_id}.*"):
        upload.unlink(missing_ok=True)


def _ascii(text: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in text)
