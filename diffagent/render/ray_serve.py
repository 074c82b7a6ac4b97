"""Render on Ray Serve (``DIFFAGENT_RENDER_BACKEND=ray``): the same ``Renderer`` runs inside Serve replicas, each
with its own pipeline cache (and a GPU where the cluster has them), and the front keeps only its job table.

Routing uses Ray Serve's model multiplexing keyed by the call's checkpoint id: a request goes to a replica that has
already loaded that checkpoint when one exists, so a switch between checkpoints costs a load only where no replica
holds it. A render is a streaming call: the replica yields progress events, then the ``RenderResult``; cancelling
the stream (the caller's cancel event) cancels the task in the replica, which stops the denoising loop at its next
step. A replica that dies mid-render ends the stream with an actor error, which ``RayRenderer`` reports as a
``RenderFailed`` naming what happened (never a hung job); Serve starts a replacement replica.

Files: replicas resolve weights themselves (the registry at ``Settings.registry`` and ``weights_dir``) and write PNGs
to the output folder the front gives; on one machine or with a shared folder (NFS and the like) both are the same
paths everywhere. Object storage would replace the output folder by an upload in ``RenderReplica.render`` and a URL in
the result (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from ray import serve

from diffagent.apicall import ApiCall
from diffagent.errors import DiffAgentError
from diffagent.render.renderer import RenderCancelled, Renderer, RenderResult
from diffagent.render.weights import Resolver
from diffagent.settings import Settings

APP_NAME = "diffagent-render"


class RenderFailed(DiffAgentError):
    """The render could not finish on the cluster (its replica died or the cluster went away)."""


class RenderReplica:
    """One Serve replica: a ``Renderer`` and the renders running on it. Deployed by ``deploy`` with the settings'
    replica count, autoscaling bounds and GPU share."""

    def __init__(self, settings_json: str, resolver: Resolver | None = None, skeletons: dict[str, str] | None = None):
        self.settings = Settings.model_validate_json(settings_json)
        self.renderer = Renderer(
            self.settings, resolver=resolver, skeletons={k: Path(v) for k, v in (skeletons or {}).items()}
        )
        self.worker = f"ray:{os.uname().nodename}:{os.getpid()}"

    @serve.multiplexed(max_num_models_per_replica=4)
    async def checkpoint(self, checkpoint_id: str) -> str:
        """The multiplexing key: Serve routes a call with this checkpoint id to a replica that reported it. The
        pipeline itself lives in the renderer's cache, which loads it on first use; this only marks it held."""
        return checkpoint_id

    async def render(self, call_json: str, output_dir: str | None = None):
        """Progress events ``("progress", step, total, worker)``, then ``("result", RenderResult)``."""
        call = ApiCall.model_validate_json(call_json)
        await self.checkpoint(serve.get_multiplexed_model_id() or str(call.checkpoint.id))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def progress(step: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("progress", step, total, self.worker))

        def run() -> RenderResult:
            return self.renderer.render(
                call, progress=progress, cancel=cancel, output_dir=Path(output_dir) if output_dir else None
            )

        task = loop.run_in_executor(None, run)
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                result = task.result()
                yield "result", result.model_copy(update={"worker": self.worker})
                return
        except asyncio.CancelledError:  # the caller cancelled the stream: stop the loop, free the device
            cancel.set()
            await asyncio.wait({task})
            raise


def gpus_per_replica(setting: float | None, cluster: dict[str, float]) -> float:
    """``Settings.ray_gpus_per_replica``, or unset: a whole GPU per replica where the cluster has any (a replica then
    renders on CUDA), none where it has none (CPU replicas)."""
    if setting is not None:
        return setting
    return 1.0 if cluster.get("GPU", 0) > 0 else 0.0


def deploy(settings: Settings, *, resolver: Resolver | None = None, skeletons: dict[str, Path] | None = None):
    """Start (or connect to) Ray and run the render application; returns its handle."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=settings.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **({} if settings.ray_address else {"num_cpus": os.cpu_count()}),
        )
    replicas = settings.ray_replicas
    scaling: dict = {"num_replicas": replicas}
    if settings.ray_max_replicas > replicas:
        scaling = {
            "autoscaling_config": {
                "min_replicas": replicas,
                "max_replicas": settings.ray_max_replicas,
                "target_ongoing_requests": 1,
            }
        }
    deployment = serve.deployment(
        RenderReplica,
        name="render",
        max_ongoing_requests=2,
        health_check_period_s=2,
        health_check_timeout_s=30,
        ray_actor_options={
            "num_cpus": settings.ray_cpus_per_replica,
            "num_gpus": gpus_per_replica(settings.ray_gpus_per_replica, ray.cluster_resources()),
        },
        **scaling,
    )
    app = deployment.bind(settings.model_dump_json(), resolver, {k: str(v) for k, v in (skeletons or {}).items()})
    serve.start(proxy_location="Disabled")  # the front talks to the app through its handle, not HTTP
    return serve.run(app, name=APP_NAME, route_prefix=None)


class RayRenderer:
    """The front's side: ``render`` has ``Renderer.render``'s signature, so the tools, the job table and the CLI use
    either. One per process (``tools.Runtime`` holds it)."""

    def __init__(
        self, settings: Settings, *, resolver: Resolver | None = None, skeletons: dict[str, Path] | None = None
    ):
        self.settings = settings
        self.handle = deploy(settings, resolver=resolver, skeletons=skeletons)
        self.device = "ray"

    def render(
        self,
        call: ApiCall,
        *,
        progress=None,
        cancel: threading.Event | None = None,
        output_dir: Path | None = None,
        on_worker=None,
    ) -> RenderResult:
        """``Renderer.render`` on a replica; ``on_worker(worker)`` hears once which replica runs it."""
        import ray
        from ray.serve.exceptions import RequestCancelledError

        out = str(output_dir if output_dir is not None else self.settings.output_dir)
        stream = self.handle.options(multiplexed_model_id=str(call.checkpoint.id), stream=True).render.remote(
            call.model_dump_json(), out
        )
        stop = threading.Event()

        def watch() -> None:  # the caller's cancel event cancels the stream, and so the task in the replica
            while not stop.wait(0.05):
                if cancel is not None and cancel.is_set():
                    stream.cancel()
                    return

        watcher = threading.Thread(target=watch, name="diffagent-ray-cancel", daemon=True)
        watcher.start()
        try:
            for event in stream:
                if event[0] == "progress":
                    if on_worker is not None:
                        on_worker(event[3])
                        on_worker = None
                    if progress is not None:
                        progress(event[1], event[2])
                elif event[0] == "result":
                    return event[1]
            raise RenderFailed("the render replica ended the job without a result; call render_image again")
        except RequestCancelledError as e:
            raise RenderCancelled("render cancelled") from e
        except DiffAgentError as e:
            # the renderer's own errors (a bad call, a missing file) reach the caller as they are, not as Ray's
            # wrapper with the replica's traceback
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, DiffAgentError) else e) from None
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError) as e:
            if cancel is not None and cancel.is_set():
                raise RenderCancelled("render cancelled") from e
            raise RenderFailed(
                "the render replica running this job stopped before it finished (its process died: "
                "out of memory, killed, or its node left the cluster); Ray Serve starts a new one. "
                "Call render_image again"
            ) from e
        finally:
            stop.set()

    def close(self) -> None:
        """Take the render application down (the Ray instance stays for whoever started it)."""
        serve.delete(APP_NAME)
