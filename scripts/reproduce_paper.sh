#!/usr/bin/env bash
# Reproduces the paper's Tables I-III (Piano et al.) on CelebA-HQ in one command:
#
#   scripts/reproduce_paper.sh CELEBAHQ_DIR [OUT_DIR]
#
# 1. draws the 1,000-image sample with a fixed seed (N, SEED) from the images under CELEBAHQ_DIR
#    and saves its list (OUT_DIR/sample.txt: the same list for the same folder and seed);
# 2. fetches the weights (`veil models fetch --eval`: the method's and the evaluation's; FETCH=0 skips);
# 3. anonymizes the sample with each of METHODS (default: sd, the paper's; empty: stop after the sample);
# 4. `veil eval --paper --html`: OUT_DIR/eval/paper_tables.md, report.html, metrics.json.
#
# Labels: IDENTITIES (default CELEBAHQ_DIR/identities.csv, columns file,identity, file relative to
# CELEBAHQ_DIR; from CelebA's identity_CelebA.txt via CelebA-HQ's mapping) is cut down to the sample;
# ATTRIBUTES (optional: CelebAMask-HQ-attribute-anno.txt or list_attr_celeba.txt) gives Table II
# its ground truth (otherwise the originals' readings).
#
# Expected wall time on one H200 (estimated from BENCHMARKS.md, not measured end to end): the CPU
# analysis at ~2 images/s in one process (1.98 measured on its 16-core host, 8 threads) and the
# faithful sampler at ~3-5.5 images/s (3.23 measured with the Brownian trees at batch 64, 5.5
# predicted with exact noise) make `veil run` of 1,000 images about 8-10 minutes, plus the models'
# loading (~40 s) and `veil eval` (detection and embeddings of 2,000 images: a few minutes; Visual
# DNA adds a ViT-B/16 pass and 13 x 768 histograms per image, ~2-4 s an image on 2 CPU cores here,
# not timed on a GPU).
set -euo pipefail
if [[ $# -lt 1 || ! -d "$1" ]]; then
  echo "usage: $0 CELEBAHQ_DIR [OUT_DIR]   (env: N=1000 SEED=0 METHODS=sd IDENTITIES ATTRIBUTES FETCH=1)" >&2
  exit 2
fi
SRC=$(cd "$1" && pwd)
OUT=${2:-reproduce-paper}
N=${N:-1000}
SEED=${SEED:-0}
METHODS=${METHODS-sd}
IDENTITIES=${IDENTITIES:-$SRC/identities.csv}
VEIL=${VEIL:-veil}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ -f "$IDENTITIES" ]] || { echo "no identities CSV at $IDENTITIES (set IDENTITIES=...)" >&2; exit 2; }

# 1. The fixed-seed sample and its list; the identities of the sample only (the gallery)
"$PY" - "$SRC" "$N" "$SEED" "$IDENTITIES" "$OUT" <<'PY'
import csv, random, sys
from pathlib import Path
src, n, seed, identities, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
with open(identities, newline="") as f:
    labels = {r["file"]: r["identity"] for r in csv.DictReader(f) if (r.get("identity") or "").strip()}
images = sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and p.relative_to(src).as_posix() in labels)
if len(images) < n:
    sys.exit(f"only {len(images)} labelled images under {src}, fewer than N={n}")
sample = sorted(random.Random(seed).sample(images, n))
(out / "sample.txt").write_text("".join(f"{src / f}\n" for f in sample))
with open(out / "identities.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "identity"])
    w.writerows([f, labels[f]] for f in sample)
print(f"sample: {n} of {len(images)} labelled images, seed {seed} -> {out / 'sample.txt'}")
PY

if [[ -z "$METHODS" ]]; then
  echo "METHODS is empty: the sample only"
  exit 0
fi

# 2. The weights (skipped files already there)
if [[ "${FETCH:-1}" != 0 ]]; then
  "$VEIL" models fetch --eval
fi

# 3. Anonymize the sample with each method
runs=()
for method in $METHODS; do
  "$VEIL" run "$OUT/sample.txt" "$OUT/$method" --method "$method" --seed "$SEED" -q
  runs+=("$OUT/$method")
done

# 4. The paper's tables
extra=()
[[ -n "${ATTRIBUTES:-}" ]] && extra+=(--celeba-attributes "$ATTRIBUTES")
"$VEIL" eval "$SRC" "${runs[@]}" --identities "$OUT/identities.csv" --out "$OUT/eval" --embedder dlib \
  --paper --html -q "${extra[@]}"
echo "paper tables: $OUT/eval/paper_tables.md"
