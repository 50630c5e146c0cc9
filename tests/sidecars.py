"""Synthetic sidecars of realistic size (~2.7 kB, as a portrait key's real one) for the
finalize tests and ``benchmarks/scale.py``: every field a done key has, values made up."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from shared.messages import ResultRecord, Status

#: the 40 CelebA attributes' names, as FACER scores them
CELEBA = [f"attr_{i:02d}_{n}" for i, n in enumerate(["smiling", "young", "male", "eyeglasses", "bald"] * 8)]


def record(job_id: str, i: int, *, input_root: str = "s3://in/", output_root: str = "s3://out/") -> ResultRecord:
    """Key ``i``'s sidecar: done, except every 7th failed and every 11th no_face."""
    key = f"{i % 97:02d}/{i:07d}.jpg"
    h = hashlib.sha256(f"{job_id}:{i}".encode()).digest()
    status = Status.FAILED if i % 7 == 3 else Status.NO_FACE if i % 11 == 5 else Status.DONE
    return ResultRecord(
        input=input_root + key,
        output=output_root + key if status == Status.DONE else None,
        status=status,
        reason=("storage: S3 503" if i % 2 else "undecodable: truncated") if status == Status.FAILED else None,
        face_box=[12.5 + h[0], 30.25 + h[1], 140.0 + h[2], 170.5 + h[3], 0.99],
        celeba_scores={n: round(h[j % 32] / 255, 4) for j, n in enumerate(CELEBA)},
        age=20 + h[4] % 50,
        ethnicity="white",
        deepface_gender="Woman",
        prompt="a photo of a smiling young woman with wavy hair, soft light, 85mm, high detail " * 5,
        negative_prompt="blurry, lowres, deformed, watermark, text, cartoon, painting " * 4,
        seed=int.from_bytes(h[:4], "big") & 0x7FFFFFFF,
        model_sha256={"sd": "a" * 64, "vae": "b" * 64, "facer": "c" * 64, "deepface": "d" * 64, "mtcnn": "e" * 64},
        job_id=job_id,
        timings_s={"decode": 0.01, "detect": 0.2, "attributes": 0.3, "generate": 1.2, "store": 0.05},
    )


def sidecar_key(i: int) -> str:
    """The relative key of key ``i``'s sidecar under OUTPUT."""
    return f"{i % 97:02d}/{i:07d}.jpg.json"


def payload(job_id: str, i: int) -> bytes:
    return record(job_id, i).model_dump_json(indent=1).encode()


def write_local(out: str, items: Iterable[tuple[str, int]]) -> int:
    """(job id, i) -> a sidecar file under ``out``; returns how many."""
    n = 0
    made: set[str] = set()
    for job_id, i in items:
        path = os.path.join(out, sidecar_key(i))
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(path, "wb") as f:
            f.write(payload(job_id, i))
        n += 1
    return n


def write_s3(client, bucket: str, prefix: str, items: Iterable[tuple[str, int]], threads: int = 32) -> int:
    """The same sidecars as objects, PUT by ``threads`` threads."""

    def put(item: tuple[str, int]) -> None:
        job_id, i = item
        client.put_object(Bucket=bucket, Key=prefix + sidecar_key(i), Body=payload(job_id, i))

    with ThreadPoolExecutor(threads) as pool:
        return sum(1 for _ in pool.map(put, items))


def size_of_one() -> int:
    return len(payload("abcdef012345", 1))


if __name__ == "__main__":
    print(size_of_one(), json.loads(payload("j", 1))["status"])
