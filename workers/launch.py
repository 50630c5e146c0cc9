"""Starting worker processes: ``veil worker cpu`` and ``veil worker gpu``.

The GPU command starts one child process per visible CUDA device, each pinned to it with
``CUDA_VISIBLE_DEVICES`` and running a solo-pool Celery worker on the GPU queue; the child
loads the diffusion model itself before it takes work. With no GPU, one worker runs on the CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from celery.signals import worker_process_init, worker_ready

from shared.settings import Settings


def _celery_argv(queue: str, name: str, pool: str, concurrency: int) -> list[str]:
    return [
        "worker",
        "-Q",
        queue,
        "-n",
        f"{name}@{socket.gethostname()}",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        "INFO",
        "-E",
        "--without-gossip",
        "--without-mingle",
    ]


def run_cpu_worker(settings: Settings, concurrency: int) -> None:
    from workers import finalize, health, metrics, runtime, shutdown  # finalize: registers veil.finalize
    from workers.celery_app import configure
    from workers.cpu import tasks  # noqa: F401  (registers the CPU task)
    from workers.cpu.stage import CpuModels

    health.reset(settings)
    app = configure(settings, tier="cpu")
    health.install(app, settings, "cpu")
    shutdown.install(settings)  # SIGTERM with the broker unreachable: out within the pod's grace
    runtime.start(settings)

    @worker_process_init.connect(weak=False)
    def _load_models(**_: object) -> None:  # in each pool child, after fork
        metrics.serve(metrics.pool_child_port(settings.metrics_port), host=settings.metrics_host, tier="cpu")
        runtime.current().models("cpu", CpuModels.for_worker)

    @worker_ready.connect(weak=False)
    def _feed(**_: object) -> None:  # in the main process, once the pool runs: tops veil.cpu up
        from workers.feeder import start_thread

        start_thread(settings)
        finalize.start_thread(settings)  # ended jobs' manifests and summaries, as tasks on veil.cpu

    app.worker_main(_celery_argv(settings.cpu_queue, "cpu", "prefork", concurrency))


def run_gpu_worker_here(settings: Settings, name: str) -> None:
    """One solo-pool worker in this process (the device is whatever this process sees)."""
    from workers import health, metrics, runtime, shutdown
    from workers.celery_app import configure
    from workers.gpu import tasks  # registers the GPU task; this tier's only
    from workers.gpu.gpumodels import GpuModels

    health.reset(settings)  # no file while the model loads: the pod is not ready yet
    app = configure(settings, tier="gpu")
    health.install(app, settings, "gpu")
    shutdown.install(settings)
    tasks.configure_batching(settings)
    runtime.start(settings).models("gpu", GpuModels.load)  # before taking any work
    metrics.set_max_batch(settings.batch_size)
    metrics.serve(settings.metrics_port, host=settings.metrics_host, tier="gpu")  # this process runs the batches
    metrics.watch_gpu_memory()
    app.worker_main(_celery_argv(settings.gpu_queue, name, "solo", 1))


def visible_devices(requested: str | None) -> list[str]:
    if requested:
        return [d.strip() for d in requested.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_gpu_workers(settings: Settings, devices: str | None) -> int:
    found = visible_devices(devices)
    if not found:
        print("veil worker gpu: no CUDA device visible; running one worker on the CPU", file=sys.stderr)
        run_gpu_worker_here(settings, "gpu-cpu")
        return 0
    children = []
    for i, dev in enumerate(found):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": dev}
        if settings.metrics_port:  # one metrics port per device's process
            env["VEIL_METRICS_PORT"] = str(settings.metrics_port + i)
        cmd = [sys.executable, "-m", "orchestrator.cli", "worker", "gpu", "--one", f"gpu{dev}"]
        children.append(subprocess.Popen(cmd, env=env))

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes)


def run_flower(settings: Settings) -> None:
    from workers import flower_patches
    from workers.celery_app import configure

    if settings.flower_password is None:
        raise ValueError("VEIL_FLOWER_PASSWORD must be set: Flower always runs behind basic auth")
    app = configure(settings)  # no task module: Flower only watches events and queues
    flower_patches.apply(public_metrics=settings.flower_public_metrics)  # refuses a Flower they do not fit
    # Through the environment, so the password shows in neither argv nor logs.
    os.environ["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
    app.start(["flower", f"--port={settings.flower_port}", f"--address={settings.flower_host}"])
