"""Beyond one machine: cameras as Ray actors, inference as a Ray Serve deployment with dynamic batching.

::

    any host:  camera actor i: source -> Denoiser (own TemporalBuffer, pre/post) -> PUB endpoint i
                                              |  window (1, 3K, H, W) as uint8
                                              v
    any host:  Serve deployment "denoise" (``ray.replicas`` replicas, ``@serve.batch``): windows of
               several cameras -> one backend.infer(N, 3K, H, W) per frame size -> rows back

Ray places the actors and replicas on the cluster's hosts, routes requests to live replicas and
restarts dead ones; this module only wires our parts to it (no scheduler of our own). A camera's
request whose replica dies is resent (``ray.retries``) and lands on a live replica, so losing a
replica loses no frame. One slow or dead camera is only its own actor: nothing waits for it.

Windows travel as uint8: the pre-processed window is exactly ``pixel / 255`` in float32, so the
replica rebuilds it bit for bit from a 4x smaller message; the result comes back rounded to uint8
the way :class:`Denoiser` rounds, so a camera publishes the pixels it would compute locally (to
within one level where a batched call rounds differently from a single one). Between a camera and
a replica on one host (``ray.shared_memory``, the default) neither goes through Ray's object store:
the camera copies the window into its own shared-memory block and the request carries only the
block's name (:mod:`stream_denoise.fleet.exchange`); the replica writes the result back into it.
A request that lands on a replica of another host is answered "not read" and resent with the
arrays, and that camera sends arrays for ``REMOTE_RUN`` requests (the resend included) before it
tries again; so does a camera whose /dev/shm has no room for its block.

Ray is optional: ``pip install "stream-denoise[ray]"`` (``ray[serve]``), imported only here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from typing import Any

import numpy as np

from .backends import Capabilities
from .config import BatchConfig, DeploymentConfig, ModelConfig, PublishConfig, RayConfig, RunConfig
from .errors import BackendUnavailable, SourceError, StreamDenoiseError
from .fleet.exchange import AttachedWindows, ShmWindow, Wire, WindowExchange
from .noise_level import MapCurve
from .resources import Closing
from .sources import is_live, open_retrying, require_files

log = logging.getLogger(__name__)

APP = "stream_denoise"
_SCALE = np.float32(1 / 255)
REMOTE_RUN = 50  # requests sent as arrays after one landed on a replica of another host


def import_ray() -> tuple[Any, Any]:
    """(ray, ray.serve), or a one-line error saying how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise BackendUnavailable('Ray is not installed: pip install "stream-denoise[ray]" (ray[serve])') from exc
    return ray, serve


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line when a cluster address (HOST:PORT or ray://HOST:PORT) does not answer:
    ``ray.init`` itself retries for minutes."""
    import socket

    m = re.match(r"^(?:ray://)?\[?([^\]\s]+?)\]?:(\d+)$", address)
    if m is None:
        return  # 'auto', 'local': Ray resolves these itself, quickly
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout_s).close()
    except OSError as exc:
        raise BackendUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


def last_line(exc: BaseException) -> str:
    """The informative line of a (possibly remote) error: its root cause's message, one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the remote exception
    if isinstance(cause, BaseException):
        exc = cause
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def node_id() -> str:
    """This process's Ray node (host) id."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


def to_wire(x: np.ndarray, noise_planes: int = 0) -> Wire:
    """A pre-processed window (``planes.Layout``) -> what travels: the uint8 pixels its RGB was made
    from (multiples of 1/255), and for a noise-aware network its noise maps as they are (float32)."""
    if not noise_planes:
        return np.rint(x * 255).astype(np.uint8)
    n, c, h, w = x.shape
    blocks = x.reshape(n, c // (3 + noise_planes), 3 + noise_planes, h, w)
    return np.rint(blocks[:, :, :3] * 255).astype(np.uint8), np.ascontiguousarray(blocks[:, :, 3:])


def from_wire(u: Wire) -> np.ndarray:
    """Back to the float32 window, the same arithmetic as ``planes.frame_block`` (bit-identical)."""
    if isinstance(u, np.ndarray):
        return np.multiply(u, _SCALE, dtype=np.float32)
    rgb, maps = u
    n, k, _, h, w = rgb.shape
    return np.concatenate([np.multiply(rgb, _SCALE, dtype=np.float32), maps], axis=2).reshape(n, -1, h, w)


def _rows(w: Wire) -> int:
    return (w if isinstance(w, np.ndarray) else w[0]).shape[0]


def _cat(parts: list[Wire]) -> Wire:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)  # type: ignore[arg-type]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])  # type: ignore[index]


def quantise_output(y: np.ndarray) -> np.ndarray:
    """Network output -> uint8, rounded exactly as the Denoiser's post-processing rounds."""
    return np.clip(y * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# The inference deployment (runs in the replicas)
# ---------------------------------------------------------------------------------------------------

def deployment(model: ModelConfig, batch: BatchConfig, rc: RayConfig) -> Any:
    """The Serve deployment for one model: ``.bind()`` it and ``serve.run`` the application."""
    _, serve = import_ray()

    @serve.deployment(name="denoise", num_replicas=rc.replicas,
                      ray_actor_options={"num_cpus": rc.replica_cpus, "num_gpus": rc.replica_gpus},
                      max_ongoing_requests=max(2 * batch.max_size, 4),
                      logging_config={"enable_access_log": False})
    class Denoise:
        def __init__(self, model_json: str, level: int = logging.INFO) -> None:
            from .backends import create_backend

            logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
            self.backend = create_backend(ModelConfig.model_validate_json(model_json))
            self.windows = self.batches = self.shared = 0
            self.attached = AttachedWindows(node_id())

        def meta(self) -> dict[str, Any]:
            b = self.backend
            return {"name": b.name, "frames": b.frames, "target": b.target, "stride": b.stride,
                    "noise_planes": b.noise_planes, "map_curve": b.map_curve.to_meta() if b.map_curve else None,
                    "pid": os.getpid(), "node": self.attached.node, "windows": self.windows,
                    "batches": self.batches, "shared": self.shared, "attached": len(self.attached)}

        @serve.batch(max_batch_size=batch.max_size, batch_wait_timeout_s=batch.max_wait_ms / 1000)
        async def infer(self, requests: list[Wire | ShmWindow]) -> list[np.ndarray | bool]:
            """Each request: a window as arrays (answered with the result), or a :class:`ShmWindow`
            (the result written into its block: True; False where the block is not visible here)."""
            out: list[np.ndarray | bool] = [False] * len(requests)
            windows: dict[int, Wire] = {}
            for i, r in enumerate(requests):
                w = self.attached.read(r) if isinstance(r, ShmWindow) else r
                if w is not None:
                    windows[i] = w
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, w in windows.items():
                by_shape.setdefault((w if isinstance(w, np.ndarray) else w[0]).shape[1:], []).append(i)
            for rows in by_shape.values():  # cameras of another frame size: another backend call
                x = from_wire(_cat([windows[i] for i in rows]))
                y = quantise_output(await asyncio.to_thread(self.backend.infer, x))
                at = 0
                for i in rows:  # a request holds one window, or a few of one camera (its flush)
                    n, r = _rows(windows[i]), requests[i]
                    if isinstance(r, ShmWindow):
                        done = self.attached.write(r, y[at : at + n])
                        out[i], self.shared = done, self.shared + int(done)
                    else:
                        out[i] = y[at : at + n]
                    at += n
                self.batches += 1
                self.windows += len(x)
            return out

    return Denoise


class ServeBackend:
    """A Backend whose ``infer`` is a request to the Serve deployment (retried when a replica dies);
    with an ``exchange`` the window and result travel through this host's shared memory."""

    def __init__(self, handle: Any, retries: int = 5, timeout_s: float = 30.0,
                 exchange: WindowExchange | None = None) -> None:
        self._handle = handle
        self.retries, self.timeout_s = retries, timeout_s
        self.resent = 0
        self._exchange = exchange
        self.transport = {"shared_memory": 0, "arrays": 0, "remote": 0}  # requests by how they travelled
        self._arrays_for = 0  # requests left to send as arrays after one landed on another host
        meta = self._call(lambda: handle.meta.remote())
        self.name = f"ray-serve:{meta['name']}"
        self.frames, self.target, self.stride = meta["frames"], meta["target"], meta["stride"]
        self.noise_planes = int(meta.get("noise_planes", 0))
        self.map_curve = MapCurve.from_meta(meta.get("map_curve"))
        self.capabilities = Capabilities()  # the deployment batches across cameras itself

    def infer(self, x: np.ndarray) -> np.ndarray:
        wire = to_wire(x, self.noise_planes)
        ex = self._exchange
        if ex is not None and self._arrays_for <= 0:
            n, _, h, w = x.shape
            refs: list[ShmWindow] = []

            def send() -> Any:  # a resend goes into a new block: a replica thought lost may still write the old
                ref = ex.put(wire, (n, 3, h, w), fresh=bool(refs))
                if ref is None:
                    return None
                refs.append(ref)
                return self._handle.infer.remote(ref)

            if self._call(send) is True:
                self.transport["shared_memory"] += 1
                return from_wire(ex.result(refs[-1]))
            if refs:  # not read: a replica of another host, or the block was gone
                self.transport["remote"] += 1
                if self.transport["remote"] == 1:
                    log.info("ray: a replica did not read this camera's shared memory (another host?): "
                             "its windows travel as arrays for the next %d requests, then it tries again", REMOTE_RUN)
            self._arrays_for = REMOTE_RUN
        self._arrays_for -= 1
        self.transport["arrays"] += 1
        return from_wire(self._call(lambda: self._handle.infer.remote(wire)))

    def _call(self, request: Any) -> Any:
        from ray.exceptions import GetTimeoutError, RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

        lost = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
        for attempt in range(self.retries + 1):
            try:
                response = request()
                return None if response is None else response.result(timeout_s=self.timeout_s)
            except (GetTimeoutError, TimeoutError) as exc:  # TimeoutError: still waiting for a replica
                raise BackendUnavailable(f"ray serve: no answer within {self.timeout_s:g} s") from exc
            except lost as exc:
                if attempt == self.retries:
                    raise BackendUnavailable(f"ray serve: replica lost {attempt + 1} times: {last_line(exc)}") from exc
                self.resent += 1
                log.warning("ray serve: a replica was lost (%s); resending (%d/%d)",
                            type(exc).__name__, attempt + 1, self.retries)
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Frees this camera's shared-memory block (the deployment belongs to the cluster)."""
        if self._exchange is not None:
            self._exchange.close()


# ---------------------------------------------------------------------------------------------------
# One camera (runs in a Ray actor on whichever host Ray picks)
# ---------------------------------------------------------------------------------------------------

class CameraWorker:
    """The actor body: one camera's :class:`Pipeline` with a :class:`ServeBackend` inside its Denoiser."""

    def __init__(self, run_json: str, app: str, rc_json: str, level: int = logging.INFO) -> None:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        self.cfg = RunConfig.model_validate_json(run_json)
        self.app = app
        self.rc = RayConfig.model_validate_json(rc_json)
        self._stop = threading.Event()
        self._pipeline: Any = None
        self._backend: ServeBackend | None = None
        self._denoiser: Any = None

    def open(self) -> str | None:
        """Connect to the deployment and, for a file, open the pipeline now (a bad path is reported
        before anything runs). None when ready, else the error in one line."""
        from ray import serve

        from .denoiser import Denoiser

        try:
            self._backend = ServeBackend(serve.get_deployment_handle("denoise", app_name=self.app),
                                         self.rc.retries, self.rc.request_timeout_s,
                                         WindowExchange(node_id()) if self.rc.shared_memory else None)
            self._denoiser = Denoiser(self._backend, self.cfg.model.window, strength=self.cfg.model.strength)
            if not is_live(self.cfg.source.uri):
                self._pipeline = self._make()
        except Exception as exc:  # reported to the driver as one line
            return last_line(exc)
        return None

    def _make(self) -> Any:
        from .pipeline import Pipeline

        return Pipeline(self.cfg, self._denoiser)

    def run(self) -> dict[str, Any]:
        """Process the camera until its source ends, max_frames, or :meth:`stop`; a summary, never raises."""
        name = self.cfg.source.display_name
        try:
            # a live camera connects now, retried with capped backoff while it is down
            pipeline = self._pipeline or open_retrying(self._make, self.cfg.source, self._stop)
            if pipeline is None:
                return {"camera": name, "state": "stopped"}
            with pipeline:
                self._pipeline = pipeline
                m = pipeline.run(self._stop)
            b = self._backend
            return {"camera": name, "state": "ended", "frames_in": m.frames_in, "frames_out": m.frames_out,
                    "resent": b.resent if b else 0, "transport": dict(b.transport) if b else {},
                    "snapshot": pipeline.snapshot()}
        except Exception as exc:  # one camera's failure is reported, never a traceback
            log.error("%s: camera stopped: %s", name, last_line(exc))
            return {"camera": name, "state": "failed", "error": last_line(exc)}
        finally:
            if self._backend is not None:
                try:
                    self._backend.close()  # its shared-memory block
                except Exception as exc:  # noqa: BLE001 -- the summary matters more than the clean-up
                    log.warning("%s: closing the camera's shared memory: %s", name, last_line(exc))

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> dict[str, Any]:
        p = self._pipeline
        return p.snapshot() if p is not None else {}


# ---------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------

def camera_run_configs(cfg: DeploymentConfig) -> list[RunConfig]:
    """One RunConfig per camera: its source, model, window and its own publishing endpoint and topic."""
    pub = cfg.publish.model_dump(exclude={"endpoint", "topic"})
    return [RunConfig(source=cam.source_config(), model=cam.model_config_for(cfg.model),
                      publish=PublishConfig(**pub, endpoint=cfg.camera_endpoint(i), topic=cam.effective_topic),
                      max_frames=cfg.max_frames, status_interval_s=cfg.status_interval_s)
            for i, cam in enumerate(cfg.cameras)]


class RayDeployment(Closing):
    """``with RayDeployment(cfg) as d: d.run(stop)``: joins (or starts) a Ray cluster, deploys one
    Serve application per distinct model and one actor per camera; closing removes them again."""

    def __init__(self, cfg: DeploymentConfig) -> None:
        """Deploys everything and opens the file cameras (their PUB sockets are bound on return)."""
        ray, serve = import_ray()
        assert cfg.ray is not None, "a [ray] table is needed"
        self.cfg, rc = cfg, cfg.ray
        self._ray, self._serve = ray, serve
        self._closers: list[Any] = []
        self.apps: dict[str, Any] = {}  # app name -> DeploymentHandle
        self.actors: dict[str, Any] = {}  # camera name -> actor handle
        runs = camera_run_configs(cfg)
        models = list(dict.fromkeys(r.model.model_copy(update={"window": None}).model_dump_json() for r in runs))
        level = logging.getLogger().getEffectiveLevel()  # -v / -q / log_level apply to Ray too
        ray_level = max(level, logging.WARNING)
        for name in ("ray", "ray.serve"):
            logging.getLogger(name).setLevel(ray_level)
        # its warning that token authentication is on describes the secure default, not a problem
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        try:
            if not ray.is_initialized():
                need = len(models) * rc.replicas * rc.replica_cpus + len(runs) * rc.camera_cpus
                if rc.address:
                    check_reachable(rc.address)
                require_files(r.source for r in runs)  # before a cluster starts
                local = {} if rc.address else {"num_cpus": rc.local_cpus or max(int(need + 0.999), os.cpu_count() or 1)}
                ray.init(address=rc.address, include_dashboard=False, logging_level=ray_level,
                         log_to_driver=level <= logging.INFO, **local)
                self._closers.append(ray.shutdown)
                log.info("ray: %s cluster with %s CPUs", "joined the" if rc.address else "started a local",
                         ray.cluster_resources().get("CPU", 0))
            serve.start(proxy_location="Disabled", logging_config={"log_level": logging.getLevelName(ray_level)})
            logging.getLogger("ray.serve").setLevel(ray_level)
            worker = ray.remote(CameraWorker)
            for j, model_json in enumerate(models):
                app = f"{APP}-{j}"
                self._closers.append(lambda app=app: serve.delete(app))
                log.info("ray serve: deploying %s (%d replica(s), batch <= %d) for %s", app, rc.replicas,
                         cfg.batch.max_size, json.loads(model_json)["model"])
                model = ModelConfig.model_validate_json(model_json)
                if model.threads is None:  # ONNX Runtime threads = the CPUs Ray reserves for the replica
                    model = model.model_copy(update={"threads": max(1, int(rc.replica_cpus))})
                try:
                    self.apps[app] = serve.run(deployment(model, cfg.batch, rc).bind(model.model_dump_json(), level),
                                               name=app, route_prefix=None)
                except Exception as exc:  # e.g. the model does not load in the replicas
                    raise BackendUnavailable(f"ray serve: deploying {model.model} failed: {last_line(exc)}") from exc
            for run in runs:
                app = f"{APP}-{models.index(run.model.model_copy(update={'window': None}).model_dump_json())}"
                name = run.source.display_name
                actor = worker.options(num_cpus=rc.camera_cpus, max_concurrency=4, name=f"{APP}:camera:{name}",
                                       max_restarts=0).remote(run.model_dump_json(), app, rc.model_dump_json(), level)
                self.actors[name] = actor
                self._closers.append(lambda a=actor: ray.kill(a))
            try:
                errors = ray.get([a.open.remote() for a in self.actors.values()])
            except ray.exceptions.RayError as exc:
                raise BackendUnavailable(f"ray: a camera actor did not start: {last_line(exc)}") from exc
            failed = [f"{name}: {e}" for name, e in zip(self.actors, errors) if e is not None]
            if failed:
                raise SourceError("; ".join(failed))
        except BaseException:
            self.close()
            raise

    def run(self, stop: threading.Event | None = None, poll_s: float = 0.5) -> dict[str, dict[str, Any]]:
        """Run every camera until all end or ``stop`` is set; their summaries by camera name."""
        ray = self._ray
        stop = stop or threading.Event()
        pending = {a.run.remote(): name for name, a in self.actors.items()}
        results: dict[str, dict[str, Any]] = {}
        stopping = False
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    results[name] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    results[name] = {"camera": name, "state": "failed", "error": last_line(exc)}
                r = results[name]
                (log.error if r["state"] == "failed" else log.info)(
                    "%s: %s%s", name, r["state"], f" ({r['error']})" if "error" in r
                    else f", {r.get('frames_out', 0)} frames published")
            if stop.is_set() and not stopping:
                stopping = True
                for name in pending.values():
                    self.actors[name].stop.remote()
        if results and all(r["state"] == "failed" for r in results.values()):
            raise StreamDenoiseError("every camera failed: " + "; ".join(r["error"] for r in results.values()))
        return results

    def replica_meta(self, app: str | None = None) -> dict[str, Any]:
        """One replica's meta (name, window, pid, windows served) — which replica Serve picks."""
        handle = self.apps[app or next(iter(self.apps))]
        return handle.meta.remote().result(timeout_s=30)
