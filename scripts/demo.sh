#!/usr/bin/env bash
# The whole vtsearch pipeline, offline, on a CPU, in a few minutes:
#   1. generate a captioned image set of coloured shapes (with "twin" test families)
#   2. train a small CLIP on it from scratch (open_clip's own model and loss)
#   3. index every image with it (stage 1: FAISS; stage 2: region features)
#   4. train the fusion reranker on the training captions (hard negatives from the index)
#   5. evaluate text -> image recall with and without reranking, then search
#   6. print how to look at it all in a browser (vtsearch serve)
# Steps whose output already exists are skipped; DEMO_DIR (default ./demo) holds it all.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
CLIP_EPOCHS=${CLIP_EPOCHS:-12}
RERANK_EPOCHS=${RERANK_EPOCHS:-12}
PYTHON=${PYTHON:-python3}
DATA="$DEMO_DIR/data"
MODEL="$DEMO_DIR/clip"
INDEX="$DEMO_DIR/index"

step() { printf '\n== %s\n' "$*" >&2; }

if [ ! -f "$DATA/meta.json" ]; then
    step "generating the shapes data set in $DATA"
    "$PYTHON" scripts/make_shapes.py "$DATA" --layout cells
fi
if [ ! -f "$MODEL/open_clip_model.safetensors" ]; then
    step "training a small CLIP from scratch ($CLIP_EPOCHS epochs)"
    "$PYTHON" scripts/train_clip.py "$DATA/train.jsonl" "$MODEL" --epochs "$CLIP_EPOCHS" --family-batches
fi
step "indexing $DATA/images"
vtsearch index "$DATA/images" --index "$INDEX" --model "local-dir:$MODEL"
vtsearch info --index "$INDEX"
if [ ! -f "$INDEX/reranker.pt" ]; then
    step "training the fusion reranker ($RERANK_EPOCHS epochs)"
    # width 64 (the default is 128): as good on this set (README) at half the time
    vtsearch train-reranker "$DATA/train.jsonl" --index "$INDEX" --epochs "$RERANK_EPOCHS" --negatives 7 --width 64
fi
step "evaluating on the twin families (same words, other binding)"
vtsearch eval "$DATA/test_twins.jsonl" --index "$INDEX"
step "evaluating on plain scenes (no twins)"
vtsearch eval "$DATA/test_plain.jsonl" --index "$INDEX"
step "searching"
vtsearch search "a red square left of a blue circle" --index "$INDEX" -k 5
step "done: to search and look in a browser, run"
echo "  vtsearch serve --index $INDEX     # then open http://127.0.0.1:1234"
