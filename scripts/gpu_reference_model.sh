#!/usr/bin/env bash
# The GPU reference model: the synthetic VIGOR set with per-city suns and seasons (10 training
# cities), the bev any-yaw recipe on one GPU, exported to ONNX. Written for a lent GPU machine
# that has PyTorch, timm and ONNX but no package registry: the other wheels travel in .whl/ (git
# ignores it), fetched beforehand on a machine with PyPI for that machine's Python (3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     affine apsw backports.zstd click-plugins cligj lz4 pyproj rasterio rosbags ruamel.yaml
# Run from the repository root:
#   OUT=/some/folder BUDGET_S=540 bash scripts/gpu_reference_model.sh
#   VARIANTS="wide wide_fov" picks which models train side by side (default: small wide).
# Writes $OUT/models.tgz (one folder per variant: model.json, *.onnx, config.json, metrics.csv) and the logs.
set -euo pipefail
start=$(date +%s)
budget_s=${BUDGET_S:-540}
jobs=${JOBS:-$(nproc)}
data=${DATA:-/tmp/cv_data}
train=${TRAIN_OUT:-/tmp/cv_train}
mkdir -p "$OUT"
if [ -z "${NO_WHEELS:-}" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# crossview_training lives in training/ (setup.py's package_dir): a link makes it importable uninstalled.
mkdir -p /tmp/pp && ln -sfn "$(pwd)/training" /tmp/pp/crossview_training
export PYTHONPATH="$(pwd):/tmp/pp:/tmp/site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

python3 -m crossview_ros.sim.cli vigor --root "$data" --cities 4 --extra-train-cities "${EXTRA_CITIES:-8}" \
    --size-m "${CITY_M:-600}" --panoramas "${PANORAMAS:-500}" --pano-height-px 320 --seed 0 --jobs "$jobs" --no-progress 2>&1 | tee "$OUT/sim.log"
sim_s=$(( $(date +%s) - start ))
# What is left, less 110 s for loading, the export and the copy, goes to training.
train_min=$(python3 -c "print(max(1.0, ($budget_s - $sim_s - 110) / 60.0))")
echo "sim took ${sim_s} s; training for ${train_min} min"
# The variants train side by side on the one GPU, sharing the CPU for their batches:
#   small     bev_small as the CPU reference has it
#   wide      1.5x its channels
#   wide_fov  wide, with half of each batch's views cut to random camera rigs (pinhole, fisheye)
variants=(${VARIANTS:-small wide})
threads=$(( jobs / ${#variants[@]} ))
train_one() {  # NAME, extra --set values...
    local name=$1; shift
    python3 -m crossview_training.train --preset cpu-bev-any-yaw --data "$data" --out "$train/$name" --no-progress \
        --set time_budget_min="$train_min" epochs=2000 threads=$threads device="${DEVICE:-cuda}" "$@" \
        >"$OUT/train-$name.log" 2>&1
    python3 -m crossview_training.export onnx --checkpoint "$train/$name/last.pt" --out "$train/models/$name" \
        >>"$OUT/train-$name.log" 2>&1
    cp "$train/$name/config.json" "$train/$name/metrics.csv" "$train/models/$name/"
}
wide="model_overrides={channels: 48, feature_dim: 24}"
pids=()
for name in "${variants[@]}"; do
    case $name in
        small) train_one small & ;;
        wide) train_one wide "$wide" & ;;
        wide_fov) train_one wide_fov "$wide" fov_sampling=0.5 & ;;
        *) echo "unknown variant $name"; exit 2 ;;
    esac
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 3 "$OUT"/train-*.log
tar -C "$train/models" -czf "$OUT/models.tgz" .
[ $status -eq 0 ] || echo "a training failed (see its log)"
echo "done in $(( $(date +%s) - start )) s"
