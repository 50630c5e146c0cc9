"""One typed settings object for every process: environment variables with the VEIL_ prefix.

Built at start-up (``Settings.from_env()``), never at import. Unknown ``VEIL_*`` variables are
rejected so a typo does not silently fall back to a default. Secrets have no defaults.
"""

from __future__ import annotations

import enum
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "VEIL_"


# -- variants: each Enum is mapped to its functions in the tier that runs it ---------------------


class DetectorName(str, enum.Enum):
    """Face detectors (see ``workers.cpu.detection``)."""

    MTCNN = "mtcnn"
    RETINAFACE = "retinaface"


class SamplerName(str, enum.Enum):
    """Diffusion samplers (see ``workers.gpu.schedulers``)."""

    FAITHFUL = "faithful"  # DPM++ SDE Karras, as in the paper: 2 UNet evaluations per step
    FAST = "fast"  # DPM++ 2M SDE Karras: 1 UNet evaluation per step


class SamplerNoise(str, enum.Enum):
    """How the faithful sampler draws its Brownian noise (see ``workers.gpu.noise``)."""

    EXACT = "exact"  # each image's Brownian path at the step times, one draw per image (batched)
    TREE = "tree"  # diffusers' torchsde Brownian trees, one per image: matches outputs made with them


class Mode(str, enum.Enum):
    """What an output is (see ``workers.gpu.scene``)."""

    PORTRAIT = "portrait"  # the paper's: a new 512x512 portrait of the biggest face
    SCENE = "scene"  # the input, same size and format, every face replaced in place


class FaceCover(str, enum.Enum):
    """Which detected faces an image's method changes in place (see ``workers.cpu.stage``:
    ``FACES_CHANGED``): the classical methods and scene mode. A portrait (method ``sd``, mode
    ``portrait``) is always of the biggest face."""

    ALL = "all"  # every detected face, biggest first (default: a face left out is a face shown)
    BIGGEST = "biggest"  # the biggest face only (the behaviour before issue 25)


class GuardName(str, enum.Enum):
    """Re-identification guard: the face embedder that checks each new face (``workers.guard``)."""

    OFF = "off"
    DLIB = "dlib"
    FACENET = "facenet"


class Method(str, enum.Enum):
    """How a face is anonymized (see ``workers.cpu.classical``): ``sd`` is the paper's generated
    portrait (GPU tier); the classical methods change the face box in place on the CPU tier."""

    SD = "sd"
    BLUR = "blur"
    PIXELATE = "pixelate"
    MASK = "mask"


class EmbedderName(str, enum.Enum):
    """Embedders for re-identification (see ``workers.embedders``): ``clip-face`` embeds the face
    crop, ``clip-image`` the whole image (the paper's Table I "image-level protocol"); ``clip``,
    the face-crop one's earlier name, still reads as ``clip-face``."""

    DLIB = "dlib"
    FACENET_VGGFACE2 = "facenet-vggface2"
    FACENET_CASIA = "facenet-casia"
    CLIP_FACE = "clip-face"
    CLIP_IMAGE = "clip-image"

    @classmethod
    def _missing_(cls, value: object) -> EmbedderName | None:
        return cls.CLIP_FACE if value == "clip" else None


class DeviceName(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def default_models_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "veil" / "models"


def default_faces_dir() -> Path:
    """``../shared/faces`` beside the project's root (the photos the tests and examples use)."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "faces"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # -- models and devices ------------------------------------------------------------------------
    models_dir: Path = Field(default_factory=default_models_dir)
    device: DeviceName = DeviceName.AUTO

    # -- inputs: what is read, and refused before decoding -----------------------------------------
    # Refuse input files larger than this (bytes), checked before reading: a 3 GB sparse .jpg or
    # /dev/zero is a failed row, not the run's memory. 64 MiB holds any real photo.
    max_input_bytes: int = Field(64 * 2**20, ge=1)
    # Refuse to decode images with more pixels than this (decompression bombs). Pillow's own
    # limit (Image.MAX_IMAGE_PIXELS) is set to it for each decode, so it is raised and lowered.
    max_image_pixels: int = Field(120_000_000, ge=1)

    # -- face detection (CPU tier) -----------------------------------------------------------------
    detector: DetectorName = DetectorName.MTCNN
    # Smallest face to keep (box side, input pixels): MTCNN's own min_face_size (its image
    # pyramid's smallest scale), and every detector's boxes are filtered by it after detection.
    # An image whose shorter side is below it is no_face without running the detector.
    min_face_size: int = Field(20, ge=8)
    # Detection runs on a copy whose longer side is at most this (boxes mapped back).
    detect_max_side: int = Field(1024, ge=128)
    # MTCNN's three stage thresholds (P-Net, R-Net, O-Net; comma-separated), facenet-pytorch's
    # defaults. Lower finds more faces, and more that are not faces (tests/integration/test_detection_settings.py
    # measures them on selfie-many-people.jpg).
    mtcnn_thresholds: Annotated[tuple[float, float, float], NoDecode] = (0.6, 0.7, 0.7)
    # A black border this share of the longer side added around the detector's copy on every side
    # (boxes mapped back, then clamped to the image): a face cut by the image's edge then looks
    # less cut to the detector. 0.25 found the two edge-cut faces of selfie-many-people.jpg that
    # MTCNN misses without it (6 of 7 faces against 4), but changed counts on 4 of the other 40
    # photos both ways and costs 1.5x the detection time, so it is off by default.
    detect_pad: float = Field(0.0, ge=0.0, le=1.0)

    # -- generation (GPU tier): the paper's method -------------------------------------------------
    sampler: SamplerName = SamplerName.FAITHFUL
    #: deprecated name of ``sampler`` (VEIL_SCHEDULER): still read, with a warning
    scheduler: SamplerName | None = Field(None, exclude=True, repr=False)
    # The faithful sampler's Brownian noise (workers/gpu/noise.py): ``exact`` draws each image's
    # path at the step times in one draw (5.8 ms per image of sampler work at batch 64 on one CPU
    # core, against 240 ms with the trees: BENCHMARKS.md); ``tree`` is diffusers' torchsde trees,
    # kept to match outputs made before. The two give different images for the same seed.
    sampler_noise: SamplerNoise = SamplerNoise.EXACT
    steps: int = Field(15, ge=1, le=200)
    # The paper does not state its guidance scale; 7.0 is the value Realistic Vision's
    # authors recommend for v5.1 (and A1111's default), so it is ours.
    guidance_scale: float = Field(7.0, ge=1.0, le=30.0)
    # Prompts are encoded as this many 77-token CLIP chunks, as A1111 does, so the long
    # negative prompts of Algorithm 1 are not cut at 77 tokens. 1 = diffusers' truncation.
    prompt_chunks: int = Field(3, ge=1, le=8)
    image_size: int = Field(512, ge=64, le=2048, multiple_of=64)
    # Prompts per diffusion call. 8 measured best for the faithful sampler on an H200 with the
    # torchsde trees (BENCHMARKS.md): larger batches lost to the trees' per-image noise. With the
    # exact noise larger batches are predicted to win; kept at 8 until measured.
    # The GPU worker lowers it at start if it does not fit the device.
    batch_size: int = Field(8, ge=1, le=256)
    # GPU-path optimisations (workers/gpu/generation.py). Measured on an H200 (BENCHMARKS.md):
    # channels_last is slower in eager mode; torch.compile gave the fast sampler 1.40x at batch 64
    # but costs minutes per worker start and was not measured with the faithful sampler, so both
    # stay off by default.
    channels_last: bool = False
    compile_mode: Literal["default", "max-autotune", "reduce-overhead"] | None = None
    seed: int = Field(0, ge=0)

    # -- what an output is: method (sd or classical) and mode (portrait or scene) ------------------
    method: Method = Method.SD
    # Gaussian blur: sigma as a fraction of the face box width. deface's default blur is a box
    # filter half its box wide (standard deviation 0.5/sqrt(12) = 0.144 x its box width); 0.15
    # is about that. 0.05 still looks blurred to a person and leaks identity (BENCHMARKS.md).
    blur_sigma: float = Field(0.15, gt=0, le=2.0)
    # Pixelation: mosaic blocks across the face box width (square blocks; deface uses 20 px blocks).
    pixelate_blocks: int = Field(10, ge=1, le=512)

    # -- what a worker may touch, and how big a message may be (SECURITY.md) ----------------------
    # URI prefixes (comma-separated: ``s3://bucket/in/,/data/in``) a message's input / output
    # must lie under; local folders are compared by real path (symlinks resolved). Empty: the
    # worker trusts its broker (development; it warns at start-up); compose and k8s set both.
    # ``veil submit`` and ``veil run`` refuse a job outside them (``veil run`` adds its own
    # INPUT and OUTPUT when they are unset).
    input_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    output_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A broker message (its whole envelope) longer than this is dead-lettered unread.
    max_message_bytes: int = Field(1 * 2**20, ge=1024)
    # Prompt text is cut to this many characters before it is tokenised (the tokens are cut at
    # VEIL_PROMPT_CHUNKS x 77 anyway; Algorithm 1's longest prompt is far shorter). The record
    # keeps the text that was used.
    max_prompt_chars: int = Field(2000, ge=64)
    # Pixels one decode may hold at once, judged from the header before decoding (a JPEG after
    # its DCT reduction, which the portrait path asks for; every other decode in full, which the
    # classical methods and scene mode need): above it the key fails ``too_large``. 50 M pixels
    # (8160x6120, a 50 MP camera) is a 150 MB RGB array; the 10900x10900 WebP bomb is 119 M.
    max_decoded_pixels: int = Field(50_000_000, ge=1)
    # Faces per scene image: an image with more is failed (``too_many_faces``), never half done.
    max_faces: int = Field(100, ge=1, le=10_000)
    # Signed messages (Celery's ``auth`` serializer; SECURITY.md, "Signed messages"): PEM files
    # of this process's RSA private key and its X.509 certificate, and the certificate store (a
    # folder or a glob of the certificates of every sender a worker accepts). All three or none;
    # no defaults. Set: every task message sent is signed, and a worker dead-letters any message
    # not signed by a certificate in the store (``unsigned``, ``bad_signature``).
    security_key: Path | None = None
    security_certificate: Path | None = None
    security_cert_store: str | None = None
    mode: Mode = Mode.PORTRAIT
    # Which detected faces the classical methods and scene mode change: all (default) or the biggest.
    faces: FaceCover = FaceCover.ALL
    # img2img strength of a face's crop in scene mode: the share of the sampler's schedule that
    # runs (0.6 of 15 steps = the last 9 steps, from the crop noised to that step's sigma). Lower
    # keeps more of the original crop (pose, light, and identity); higher invents more.
    scene_strength: float = Field(0.6, gt=0.0, le=1.0)
    # The square regenerated around a face: the box's longer side plus this share of it on each side.
    scene_margin: float = Field(0.35, ge=0.0, le=2.0)
    # Width of the feathered blend at the square's edge, as a share of the square's side: the
    # new crop fades into the original over it, so the square's border pixels stay the input's.
    scene_feather: float = Field(0.15, gt=0.0, le=0.5)

    # -- the re-identification guard (workers/guard.py) --------------------------------------------
    guard: GuardName = GuardName.OFF
    # A new face whose embedding is closer than this to the original's (cosine distance of
    # workers/embedders.py) still re-identifies the person. Unset: the embedder's own (workers/guard.py
    # DEFAULT_THRESHOLD: dlib 0.10, measured on ../shared/faces; facenet 0.605, not measured).
    guard_threshold: float | None = Field(None, gt=0.0, le=2.0)
    # Generations per face (the first and its retries with the next seeds) before the mask fallback.
    guard_tries: int = Field(3, ge=1, le=20)

    # -- storage: S3 (local paths need nothing) ----------------------------------------------------
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    # -- broker and queues (workers/celery_app.py, workers/transport.py) ---------------------------
    broker_url: str = "redis://127.0.0.1:6379/0"
    # The Redis holding job counters (shared/jobs.py); default: the broker's, when it is Redis.
    jobs_url: str = ""
    cpu_queue: str = "veil.cpu"
    gpu_queue: str = "veil.gpu"
    # How long a message may stay unacknowledged before Redis hands it to another worker: the
    # time to recover the keys of a worker that died (SIGKILL, OOM kill, lost node). It must
    # exceed what a worker holds a message for: the prefetched next batch waits out the current
    # one, so 2 x the longest GPU batch + VEIL_GPU_BATCH_WAIT_S, and the longest retry wait
    # (RETRY_POLICY.backoff_max_s, 30 s; a retry is an ETA message held unacknowledged). Too low
    # gives duplicate work, never duplicate outputs (a key's sidecar is its commit marker).
    visibility_timeout_s: int = Field(300, ge=1)
    gpu_batch_wait_s: float = Field(2.0, gt=0)

    # -- Redis connections: bounded against a partition (shared/redisconn.py) ----------------------
    # Every Redis connection Veil opens (Celery's broker connections and Veil's own clients:
    # jobs, feeder, exporter, status, health) gets these, so a half-open connection (a network
    # partition: no RST, no FIN, just silence) is noticed within ~30 s (RELIABILITY.md).
    # A blocking read or write gives up after this many seconds. Must exceed kombu's BRPOP poll
    # (1 s), or every idle poll would time out.
    redis_socket_timeout_s: float = Field(5.0, gt=1.0)
    redis_connect_timeout_s: float = Field(5.0, gt=0)
    # redis-py PINGs a connection idle longer than this before using it; kombu checks its BRPOP
    # and pub/sub connections this often and drops one whose reply is overdue by this much.
    redis_health_check_interval_s: int = Field(10, ge=1)
    # TCP keepalive: first probe after this many idle seconds, then 3 probes at a third of it; the
    # kernel drops a dead peer's connection after ~2x this (TCP_USER_TIMEOUT bounds unacked data).
    redis_keepalive_s: int = Field(10, ge=1)

    # -- jobs: the feeder's window, job records (workers/feeder.py, shared/jobs.py) ----------------
    # At most this many messages sit in veil.cpu + veil.gpu + unacknowledged (kombu's
    # ``unacked``) at once; the feeder (workers/feeder.py) tops them up from the jobs' pending
    # lists, a fair share per job. Bounds Redis memory whatever the job size. The upper bound
    # of the window: VEIL_QUEUE_WINDOW_S sizes it below this from the measured throughput.
    # Keep it above what the workers hold (CPU processes + 2 x batch size per GPU worker).
    queue_window: int = Field(1000, ge=1)
    # The window in SECONDS of the jobs' measured finish rate (keys/s over the last 30 s x
    # this), at least 32 keys and twice what the workers hold, at most VEIL_QUEUE_WINDOW:
    # a job submitted after a big one has its first key started within about this long,
    # whatever is queued before it. 0: the window is VEIL_QUEUE_WINDOW keys.
    queue_window_s: float = Field(90.0, ge=0)
    # Seconds between the feeder's passes (each CPU worker runs one; a Redis lock lets one feed).
    feed_interval_s: float = Field(1.0, gt=0)
    # How long a job's record stays in Redis after it finished or was cancelled (7 days).
    job_ttl_s: int = Field(7 * 86400, ge=1)

    # -- job end: _veil/JOB/manifest.jsonl and summary.json (workers/finalize.py) ------------------
    # Sidecar reads in flight at once while a job's manifest is written (a bounded thread pool).
    finalize_threads: int = Field(16, ge=1, le=256)
    # A job handed to a finalize task is due again after this many seconds unless the task
    # finished it (it renews the lease while it works): a lost message or a dead worker is redone.
    finalize_lease_s: float = Field(600.0, gt=0)
    # Seconds between the finalize dispatcher's passes (a thread of each CPU worker).
    finalize_poll_s: float = Field(5.0, gt=0)

    # -- workers: threads and health (workers/health.py: the pods' probes) -------------------------
    # torch and onnxruntime threads in each CPU worker pool process. One per process, with one
    # process per core (`veil worker cpu`'s default concurrency), measured 2.7x the throughput of
    # one process using every core's threads on an idle 16-core host.
    cpu_threads: int = Field(1, ge=1)
    # A file the worker rewrites from its event loop every VEIL_HEALTH_INTERVAL_S while it
    # consumes; `veil health --max-age S` checks its age (the pods' probes). Unset: no file.
    health_file: Path | None = None
    health_interval_s: float = Field(10.0, gt=0)

    # -- monitoring: Prometheus (workers/metrics.py) and Flower (workers/flower_patches.py) --------
    # Each worker process serves /metrics on this port (0 = off): a CPU worker's pool child N
    # (0-based) on port + N, GPU worker process i (one per device) on port + i. `veil exporter`
    # serves the queue depths on it.
    metrics_port: int = Field(0, ge=0, le=65535)
    # The address each /metrics endpoint (workers and `veil exporter`) listens on. Loopback by
    # default; containers set 0.0.0.0 so Prometheus can scrape them.
    metrics_host: str = "127.0.0.1"
    flower_port: int = 5555
    # The address Flower listens on. Loopback by default: only this host reaches it; compose and
    # k8s set 0.0.0.0 inside the container (compose publishes it on 127.0.0.1 only).
    flower_host: str = "127.0.0.1"
    flower_user: str = "veil"
    flower_password: SecretStr | None = None
    # Flower's /metrics (Prometheus: worker and task names) behind the same basic auth unless
    # true. /healthcheck stays open (it answers only "OK").
    flower_public_metrics: bool = False

    # -- tests and examples ------------------------------------------------------------------------
    faces_dir: Path = Field(default_factory=default_faces_dir)

    @field_validator("input_roots", "output_roots", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("mtcnn_thresholds", mode="before")
    @classmethod
    def _three_thresholds(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if len(parts) != 3:
                raise ValueError("three comma-separated numbers, e.g. 0.6,0.7,0.7")
            return tuple(parts)
        return value

    @field_validator("mtcnn_thresholds", mode="after")
    @classmethod
    def _probabilities(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.0 < v < 1.0 for v in value):
            raise ValueError("each threshold must be between 0 and 1")
        return value

    @field_validator("models_dir", "faces_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _deprecated_scheduler(self) -> Settings:
        if self.scheduler is None:
            return self
        if "sampler" in self.model_fields_set and self.sampler != self.scheduler:
            raise ValueError("VEIL_SCHEDULER is the old name of VEIL_SAMPLER: set only VEIL_SAMPLER")
        logging.getLogger(__name__).warning("VEIL_SCHEDULER is deprecated: use VEIL_SAMPLER=%s", self.scheduler.value)
        object.__setattr__(self, "sampler", self.scheduler)  # frozen: moved once, here
        object.__setattr__(self, "scheduler", None)
        return self

    @model_validator(mode="after")
    def _guard_needs_faces_in_place(self) -> Settings:
        """The guard checks a face where it was; a portrait has no such place."""
        if self.guard is not GuardName.OFF and self.mode is Mode.PORTRAIT and self.method is Method.SD:
            raise ValueError(
                "--guard (VEIL_GUARD) needs --mode scene (VEIL_MODE) or a classical --method blur|pixelate|mask "
                "(VEIL_METHOD): a portrait is not checked"
            )
        return self

    @model_validator(mode="after")
    def _signing_all_or_nothing(self) -> Settings:
        names = {"VEIL_SECURITY_KEY": self.security_key, "VEIL_SECURITY_CERTIFICATE": self.security_certificate,
                 "VEIL_SECURITY_CERT_STORE": self.security_cert_store}  # fmt: skip
        missing = [name for name, value in names.items() if not value]
        if 0 < len(missing) < len(names):
            raise ValueError(f"message signing needs {', '.join(names)} together: {', '.join(missing)} unset")
        return self

    @property
    def signing(self) -> bool:
        """Task messages are signed and only signed ones accepted (the three VEIL_SECURITY_* set)."""
        return self.security_key is not None

    @model_validator(mode="after")
    def _jobs_url(self) -> Settings:
        if not self.jobs_url:
            if not self.broker_url.startswith(("redis://", "rediss://")):
                raise ValueError("VEIL_JOBS_URL must be set (a redis:// URL) when the broker is not Redis")
            object.__setattr__(self, "jobs_url", self.broker_url)  # frozen: filled in once, here
        return self

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from the environment, rejecting unknown ``VEIL_*`` variables."""
        env = os.environ if environ is None else environ
        known = {ENV_PREFIX + name.upper() for name in cls.model_fields}
        unknown = sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
        if unknown:
            raise ValueError("; ".join(_unknown_setting(name, known) for name in unknown))
        if environ is None:
            return cls(**overrides)  # type: ignore[arg-type]
        values: dict[str, object] = {
            k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)
        }
        values.update(overrides)
        return cls.model_validate(values)


def _unknown_setting(name: str, known: set[str]) -> str:
    """``unknown setting VEIL_STEP: did you mean VEIL_STEPS?`` (the closest known names), not
    all 60 names on one line."""
    import difflib

    close = difflib.get_close_matches(name.upper(), sorted(known), n=3, cutoff=0.6)
    hint = f": did you mean {' or '.join(close)}?" if close else " (README: Settings lists them)"
    return f"unknown setting {name}{hint}"
