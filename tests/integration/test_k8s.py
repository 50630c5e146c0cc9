"""The Kubernetes deployment (deploy/k8s, issue 12).

Offline checks of every overlay as `kubectl kustomize` renders it: each core object against
Kubernetes' own schemas (kubernetes-validate, strict), the KEDA objects against the fields
KEDA's CRDs require and the trigger metadata its redis scaler reads, every VEIL_* name a
Settings field, no secret value anywhere. Then, against a real Redis with real worker
processes: the list and database each ScaledObject watches is the key whose length grows when
`veil submit` enqueues and shrinks when that tier consumes, and a GPU pod killed while holding
keys gets them back into that list through the CPU tier (the GPU tier at zero pods).

No cluster runs here: scheduling, the GPU node pool, KEDA's own polling and the probes'
timing are what only a real cluster confirms (deploy/k8s/README.md, "What was validated").
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import kubernetes_validate
import pytest
import redis
import yaml

from shared.jobs import JobStore
from shared.settings import Settings
from tests.services import REDIS_PORT, ROOT, moto_s3, redis_url, start_worker, stop, wait_for, worker_env
from workers import transport

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
#: the newest Kubernetes release whose schemas kubernetes-validate 1.37.0 ships
K8S_VERSION = "1.37.0"
KEDA_API = "keda.sh/v1alpha1"

# What KEDA's redis scaler reads from a trigger's metadata (kedacore/keda
# pkg/scalers/redis_scaler.go: redisMetadata and redisConnectionInfo, order=triggerMetadata),
# and from a TriggerAuthentication (order=authParams). A key outside these is ignored by KEDA,
# so a typo (listname, databaseindex) silently scales on the wrong thing.
REDIS_TRIGGER_KEYS = {
    "address", "addresses", "host", "hosts", "port", "ports", "username", "password",
    "usernameFromEnv", "passwordFromEnv", "addressFromEnv", "hostFromEnv", "portFromEnv",
    "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
    "sentinelUsername", "sentinelPassword", "sentinelMaster",
}  # fmt: skip
REDIS_AUTH_PARAMS = {"address", "host", "port", "username", "password", "tls", "cert", "key", "keyPassword", "ca",
                     "sentinelUsername", "sentinelPassword", "sentinelMaster"}  # fmt: skip
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SECRET_SETTINGS = {f"VEIL_{n.upper()}" for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the overlays")
    return exe


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def base_objects() -> list[dict]:
    """The base's objects as written (no kubectl needed): what the in-cluster overlay renders."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [d for f in kustomization["resources"] for d in yaml.safe_load_all((K8S / "base" / f).read_text()) if d]


def by_kind(objects, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(obj: dict) -> list[dict]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] != "Pod" else obj["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_templates(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def container_env(objects, container: dict, secret: str = "s3cret") -> dict[str, str]:
    """The environment Kubernetes gives the container: its ConfigMaps, then its env entries,
    secret references filled with ``secret`` and $(VAR) expanded as the kubelet does."""
    maps = by_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            env[entry["name"]] = secret
        else:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"])
    return env


def settings_of(objects, container: dict) -> Settings:
    """The Settings the container's veil process builds from that environment."""
    return Settings.from_env({k: v for k, v in container_env(objects, container).items() if k.startswith("VEIL_")})


def worker_container(objects, name: str) -> dict:
    return by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]


def tier_of(deployment: dict) -> str:
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["veil", "worker"], command
    return command[2]


# -- rendering and Kubernetes' schemas ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_core_object_validates_against_kubernetes(overlay):
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Job", "PersistentVolumeClaim"} <= kinds
    assert {"ScaledObject", "TriggerAuthentication"} <= kinds
    core = [o for o in objects if not o["apiVersion"].startswith("keda.sh/")]
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # the validator does reject: a misspelt field in a pod template
    broken = yaml.safe_load(yaml.safe_dump(by_kind(objects, "Deployment")["gpu-worker"]))
    broken["spec"]["template"]["spec"]["containers"][0]["terminationGracePeriod"] = 120
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_overlays_differ_only_in_redis():
    inside, outside = render("in-cluster-redis"), render("external-redis")
    assert "redis" in by_kind(inside, "StatefulSet") and "redis" in by_kind(inside, "Service")
    assert not by_kind(outside, "StatefulSet") and "redis" not in by_kind(outside, "Service")
    for objects, scheme in ((inside, "redis"), (outside, "rediss")):
        for name in ("cpu-worker", "gpu-worker", "flower"):
            url = container_env(objects, worker_container(objects, name))["VEIL_BROKER_URL"]
            assert urlsplit(url).scheme == scheme, (name, url)


# -- the pods ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_worker_pod(overlay):
    objects = render(overlay)
    gpu = by_kind(objects, "Deployment")["gpu-worker"]
    spec = gpu["spec"]["template"]["spec"]
    worker = spec["containers"][0]
    assert len(spec["containers"]) == 1 and worker["command"] == ["veil", "worker", "gpu"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1  # one worker per GPU
    assert "replicas" not in gpu["spec"]  # KEDA owns the count; a re-apply must not reset it
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"veil.dev/node-pool": "gpu"}
    assert worker["resources"]["requests"]["cpu"] and worker["resources"]["requests"]["memory"]
    # the models volume: the PVC the fetch Job fills, read-only here
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "veil-models", "readOnly": True}
    mounts = {m["name"]: m for m in worker["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    job = by_kind(objects, "Job")["veil-models-fetch"]
    job_spec = job["spec"]["template"]["spec"]
    assert "veil models fetch" in " ".join(job_spec["containers"][0]["command"])
    assert job_spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "veil-models"
    # grace: one batch (2.57 s for the whole GPU stage at batch 8 on an H200, BENCHMARKS.md) and
    # a margin; liveness allows more than that batch before it kills the worker
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= 30 + 2.57
    probes = {k: worker[k]["exec"]["command"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for command in probes.values():
        assert command[:2] == ["veil", "health"], command
    assert float(probes["livenessProbe"][probes["livenessProbe"].index("--max-age") + 1]) > 2.57
    env = container_env(objects, worker)
    assert env["VEIL_HEALTH_FILE"].startswith(mounts["run"]["mountPath"] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_restricted_and_non_root(overlay):
    """The namespace enforces the "restricted" Pod Security Standard; every pod meets it."""
    objects = render(overlay)
    labels = by_kind(objects, "Namespace")["veil"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in pod_templates(objects):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in containers(obj):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert c["resources"]["requests"], c["name"]


def veil_command_lines(objects) -> list[list[str]]:
    """Every `veil ...` command line of a container or an exec probe (`sh -c "a && b"` split)."""
    lines = []
    for obj in pod_templates(objects):
        for c in containers(obj):
            argvs = [c["command"]] + [c[p]["exec"]["command"] for p in PROBES if "exec" in c.get(p, {})]
            for argv in argvs:
                if argv[:2] == ["sh", "-c"]:
                    lines += [shlex.split(part) for part in argv[2].split("&&")]
                else:
                    lines.append(argv)
    return [line for line in lines if line[:1] == ["veil"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_veil_command_parses_with_the_cli(overlay):
    from orchestrator.cli import build_parser

    lines = veil_command_lines(render(overlay))
    assert ["veil", "models", "fetch", "--quiet"] in lines and ["veil", "flower"] in lines
    assert ["veil", "health", "--max-age", "300"] in lines
    for argv in lines:
        build_parser().parse_args(argv[1:])  # SystemExit (a failure) on an unknown command or flag
    with pytest.raises(SystemExit):
        build_parser().parse_args(["health", "--max-age"])


# -- settings and secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_veil_variable_is_a_setting_and_valid(overlay):
    objects = render(overlay)
    known = {f"VEIL_{name.upper()}" for name in Settings.model_fields}
    text = yaml.safe_dump_all(objects)
    named = set(re.findall(r"\bVEIL_[A-Z0-9_]+", text))
    assert named and named <= known, sorted(named - known)
    for obj in pod_templates(objects):
        for c in containers(obj):
            if c["name"] == "redis" or (c["command"][0] != "veil" and "veil" not in " ".join(c["command"])):
                continue  # redis (its command names the ACL user veil)
            assert settings_of(objects, c).models_dir == Path("/models")


def secret_problems(objects) -> list[str]:
    """Secret values in rendered objects: a Secret, a password/key variable not from a
    secretKeyRef, a credential in a URL or command line, a secret-looking ConfigMap key."""
    problems = [f"Secret {name}" for name in by_kind(objects, "Secret")]
    secret_name = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
    for obj in pod_templates(objects):
        where = obj["metadata"]["name"]
        for c in containers(obj):
            for entry in c.get("env", []):
                name = entry["name"]
                if (name in SECRET_SETTINGS or secret_name.search(name)) and "secretKeyRef" not in entry.get(
                    "valueFrom", {}
                ):
                    problems.append(f"{where}: {name} not from a secretKeyRef")
            for value in [e.get("value", "") for e in c.get("env", [])] + c.get("command", []) + c.get("args", []):
                for userinfo in re.findall(r"//([^/@\s]*)@", value):
                    if not re.fullmatch(r"[^:]*:\$\(\w+\)", userinfo):  # only $(VAR) references
                        problems.append(f"{where}: credential in {value!r}")
                if re.search(r"requirepass\s+[^$\s]", value):
                    problems.append(f"{where}: literal requirepass")
    for name, cm in by_kind(objects, "ConfigMap").items():
        problems += [f"ConfigMap {name}: {k}" for k in cm["data"] if k in SECRET_SETTINGS or secret_name.search(k)]
    for name, auth in by_kind(objects, "TriggerAuthentication").items():
        if set(auth["spec"]) != {"secretTargetRef"}:
            problems.append(f"TriggerAuthentication {name}: {sorted(auth['spec'])}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_in_any_manifest(overlay):
    objects = render(overlay)
    assert secret_problems(objects) == []
    # the check does find them: a password as a value, and one inside the broker URL
    leaky = yaml.safe_load(yaml.safe_dump(list(objects)))
    flower = next(o for o in leaky if o["kind"] == "Deployment" and o["metadata"]["name"] == "flower")
    env = flower["spec"]["template"]["spec"]["containers"][0]["env"]
    for entry in env:
        if entry["name"] == "VEIL_FLOWER_PASSWORD":
            entry.pop("valueFrom")
            entry["value"] = "hunter2-hunter2"
        if entry["name"] == "VEIL_BROKER_URL":
            entry["value"] = "redis://:hunter2@redis.veil.svc:6379/0"
    assert secret_problems(leaky) == [
        "flower: VEIL_FLOWER_PASSWORD not from a secretKeyRef",
        "flower: credential in 'redis://:hunter2@redis.veil.svc:6379/0'",
    ]
    # and the files themselves (comments, examples) hold no credential-looking literal
    for path in K8S.rglob("*.yaml"):
        assert not re.search(r"(?i)(password|secret)[ \t]*:[ \t]*['\"]?[A-Za-z0-9+/=]{8,}", path.read_text()), path


def test_readme_node_pool_examples_fit_the_gpu_pods():
    """The Karpenter NodePool in deploy/k8s/README.md gives nodes the label the GPU pods select
    and the taint they tolerate, and caps GPUs at the GPU ScaledObject's maxReplicaCount."""
    blocks = re.findall(r"```yaml\n(.*?)```", (K8S / "README.md").read_text(), re.S)
    docs = [d for b in blocks for d in yaml.safe_load_all(b) if d]
    pool = next(d for d in docs if d.get("kind") == "NodePool")
    assert pool["apiVersion"] == "karpenter.sh/v1"
    objects = base_objects()
    pod = by_kind(objects, "Deployment")["gpu-worker"]["spec"]["template"]["spec"]
    template = pool["spec"]["template"]
    assert pod["nodeSelector"].items() <= template["metadata"]["labels"].items()
    for taint in template["spec"]["taints"]:
        assert any(t["key"] == taint["key"] and t["effect"] == taint["effect"] for t in pod["tolerations"]), taint
    assert (
        pool["spec"]["limits"]["nvidia.com/gpu"]
        == by_kind(objects, "ScaledObject")["gpu-worker"]["spec"]["maxReplicaCount"]
    )


# -- KEDA ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_watch_the_lists_celery_uses(overlay):
    objects = render(overlay)
    scaled = by_kind(objects, "ScaledObject")
    deployments = by_kind(objects, "Deployment")
    auths = by_kind(objects, "TriggerAuthentication")
    assert set(scaled) == {"cpu-worker", "gpu-worker"}
    for so in scaled.values():
        assert so["apiVersion"] == KEDA_API
        spec = so["spec"]
        # required by KEDA's CRD (keda.sh_scaledobjects.yaml): scaleTargetRef.name, triggers[].type/metadata
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert spec.get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert len(spec["triggers"]) == 1
        trigger = spec["triggers"][0]
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), meta  # the CRD: a map of strings
        assert set(meta) <= REDIS_TRIGGER_KEYS, sorted(set(meta) - REDIS_TRIGGER_KEYS)
        assert "password" not in meta and "listName" in meta
        listed, active = int(meta["listLength"]), int(meta["activationListLength"])
        assert listed > 0 and active == 0  # any waiting key wakes a tier at zero
        assert meta["enableTLS"] in ("true", "false")
        # the same Redis, database and list as the target's workers
        settings = settings_of(objects, target["spec"]["template"]["spec"]["containers"][0])
        broker = urlsplit(settings.broker_url)
        assert meta["address"] == f"{broker.hostname}:{broker.port}", (meta["address"], settings.broker_url)
        assert meta["databaseIndex"] == (broker.path.strip("/") or "0")
        # TLS as the workers use it, verified against a CA: KEDA's tls and ca from a Secret in the
        # TriggerAuthentication (KEDA refuses enableTLS "true" beside them)
        auth_refs = {r["parameter"]: r for r in auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]}
        assert meta["enableTLS"] == "false"
        assert ("tls" in auth_refs) == (broker.scheme == "rediss") == ("ca" in auth_refs)
        if broker.scheme == "rediss":
            query = dict(part.split("=", 1) for part in broker.query.split("&"))
            assert query["ssl_cert_reqs"] == "required", settings.broker_url
            ca_mount = next(m for m in target["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                            if query["ssl_ca_certs"].startswith(m["mountPath"] + "/"))  # fmt: skip
            volume = next(v for v in target["spec"]["template"]["spec"]["volumes"] if v["name"] == ca_mount["name"])
            assert (volume["secret"]["secretName"], "ca.crt") == (auth_refs["ca"]["name"], auth_refs["ca"]["key"])
        # Redis's ACL user: the workers' and KEDA's the same
        assert broker.username == "veil" and auth_refs["username"]["name"] == "veil-redis"
        queue = {"cpu": settings.cpu_queue, "gpu": settings.gpu_queue}[tier_of(target)]
        assert meta["listName"] == transport.list_name(queue)  # the list Veil's priority-0 messages wait in
        # the password through a TriggerAuthentication from the workers' own Secret
        auth = auths[trigger["authenticationRef"]["name"]]
        refs = auth["spec"]["secretTargetRef"]
        assert all({"parameter", "name", "key"} <= set(r) for r in refs)
        assert {r["parameter"] for r in refs} <= REDIS_AUTH_PARAMS
        password_ref = next(r for r in refs if r["parameter"] == "password")
        worker_ref = next(e for e in target["spec"]["template"]["spec"]["containers"][0]["env"]
                          if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]  # fmt: skip
        assert (password_ref["name"], password_ref["key"]) == (worker_ref["name"], worker_ref["key"])
    gpu, cpu = scaled["gpu-worker"]["spec"], scaled["cpu-worker"]["spec"]
    gpu_settings = settings_of(objects, worker_container(objects, "gpu-worker"))
    assert gpu["minReplicaCount"] == 0  # scale to zero
    # to zero only once veil.gpu has been empty longer than a key's retry waits
    from shared.errors import RETRY_POLICY

    assert gpu["cooldownPeriod"] >= RETRY_POLICY.least_total_wait()
    assert int(gpu["triggers"][0]["metadata"]["listLength"]) % gpu_settings.batch_size == 0  # whole batches
    # the CPU tier keeps a pod: a live worker is what restores a dead GPU pod's reserved keys
    assert cpu["minReplicaCount"] >= 1


# -- the lists, against the real Redis, with real workers ---------------------------------------------

FACES = ["couple.jpg", "fr_biden.jpg", "id02_12.jpg", "id03_16.jpg", "id05_67.jpg", "id07_25.jpg"]
BUCKET = "veil-k8s"


def veil(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_keda_lists_grow_on_submit_and_shrink_as_each_tier_consumes(faces_dir, tiny_models, tmp_path):
    objects = base_objects()
    deployments = by_kind(objects, "Deployment")
    watched = {tier_of(deployments[so["spec"]["scaleTargetRef"]["name"]]): so["spec"]["triggers"][0]["metadata"]
               for so in by_kind(objects, "ScaledObject").values()}  # fmt: skip
    cpu_list, gpu_list = watched["cpu"]["listName"], watched["gpu"]["listName"]
    manifest_env = container_env(objects, worker_container(objects, "cpu-worker"))
    # the workers use the test's Redis at the manifests' broker database; the lists are read
    # where the ScaledObjects look (their databaseIndex), as KEDA does: LLEN of a list
    url = redis_url(int(urlsplit(manifest_env["VEIL_BROKER_URL"]).path.strip("/")))
    keda = {tier: redis.Redis(port=REDIS_PORT, db=int(meta["databaseIndex"])) for tier, meta in watched.items()}

    def length(tier: str) -> int:
        name = watched[tier]["listName"]
        assert keda[tier].type(name) in (b"list", b"none")
        return int(keda[tier].llen(name))

    broker = redis.Redis.from_url(url)
    health = tmp_path / "cpu.health"
    with moto_s3() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        for name in FACES:
            s3.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=(faces_dir / name).read_bytes())
        env = worker_env(
            models_dir=tiny_models, broker_url=url, s3_endpoint_url=endpoint, s3_access_key_id="testing",
            s3_secret_access_key="testing", steps=2, image_size=64, cpu_queue=manifest_env["VEIL_CPU_QUEUE"],
            gpu_queue=manifest_env["VEIL_GPU_QUEUE"], batch_size=8, gpu_batch_wait_s=1,
        )  # fmt: skip
        cpu_env = env | {"VEIL_HEALTH_FILE": str(health), "VEIL_HEALTH_INTERVAL_S": "1"}
        # a GPU worker that waits for a full batch of 8 that never comes (it holds all six keys
        # unacknowledged), and a CPU worker that restores keys held for more than 20 s
        holding_env = env | {"VEIL_GPU_BATCH_WAIT_S": "120", "VEIL_VISIBILITY_TIMEOUT_S": "20"}
        restoring_env = env | {"VEIL_VISIBILITY_TIMEOUT_S": "20"}

        def healthy(max_age: int = 3) -> bool:
            return veil(cpu_env, "health", "--max-age", str(max_age)).returncode == 0

        procs = []
        try:
            # 1. `veil submit` with no worker running: the keys wait in the CPU ScaledObject's list
            out = veil(env, "submit", f"s3://{BUCKET}/in/", "--out", f"s3://{BUCKET}/out/")
            assert out.returncode == 0, out.stderr
            job_id = out.stdout.strip().splitlines()[-1]
            wait_for(lambda: length("cpu") > 0, 30, "keys in the CPU list")
            assert length("gpu") == 0
            # 2. the CPU tier consumes its list and fills the GPU list (no GPU worker yet)
            cpu = start_worker("cpu", cpu_env, tmp_path / "cpu.log", "--concurrency", "1")
            procs.append(cpu)
            wait_for(lambda: length("cpu") == 0 and length("gpu") == len(FACES), 300, "the CPU tier's output")
            # no message waits in a priority list (kombu's "veil.gpu\x06\x163"...): KEDA counts one list
            queues = {k.decode() for k in broker.keys(f"{cpu_list}*") + broker.keys(f"{gpu_list}*")}
            assert queues == {gpu_list}, queues
            assert transport.depths(broker, [gpu_list]) == {gpu_list: length("gpu")}  # all in the list KEDA reads
            # the probe: fresh while the worker's loop runs, stale once it is frozen, fresh again after
            assert healthy()
            os.killpg(cpu.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: not healthy(), 30, "the frozen worker's health file to go stale")
            finally:
                os.killpg(cpu.pid, signal.SIGCONT)
            wait_for(healthy, 30, "the health file after the worker resumed")
            # 3. a GPU worker reserves the keys: they leave the list for the `unacked` hash
            gpu_log = tmp_path / "gpu.log"
            procs.append(start_worker("cpu", restoring_env, tmp_path / "cpu2.log", "--concurrency", "1"))
            gpu = start_worker("gpu", holding_env, gpu_log)
            procs.append(gpu)
            wait_for(lambda: length("gpu") == 0 and broker.hlen("unacked") == len(FACES), 300, "the reservation")
            assert "batch of" not in gpu_log.read_text(errors="replace")  # waiting for a full batch
            # 4. the pod dies holding them (SIGKILL: node lost), the GPU tier is at zero pods:
            #    a CPU worker's restore sweep puts them back in the list, which wakes the tier
            stop(gpu, signal.SIGKILL)
            wait_for(lambda: length("gpu") == len(FACES), 90, "the keys back in the GPU list")
            stop(procs[1])
            # 5. a GPU worker consumes the list; every key ends done
            procs.append(start_worker("gpu", env, gpu_log))
            jobs = JobStore.from_url(url)
            job = wait_for(lambda: (j := jobs.get(job_id)) and j.finished >= len(FACES) and j, 300, "the job")
            assert job.counts == {"done": len(FACES), "no_face": 0, "failed": 0}
            assert length("gpu") == 0 and length("cpu") == 0
        finally:
            for proc in reversed(procs):
                stop(proc)
