#!/usr/bin/env bash
# Run (or resume) a NOMAD study of the LoRA blackbox.
#
#   ./run_nomad.sh [PARAM_FILE] [STUDY_DIR] [OPTION ...]
#
# PARAM_FILE defaults to nomad_params/demo.txt, STUDY_DIR to runs/<PARAM_FILE name>; OPTIONs go to
# lora-blackbox study (e.g. --warm-start runs/demo-old: seed a new study with an earlier one). NOMAD is the
# nomad executable ($NOMAD_EXE, or nomad on PATH) when there is one, else the NOMAD library embedded
# in PyNomadBBO. Ctrl-C stops after the running evaluations (twice: cuts them); the same command
# resumes. At the end it prints the best point found and where the records and NOMAD's files are.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
param=${1:-$here/nomad_params/demo.txt}

if ! command -v lora-blackbox >/dev/null 2>&1; then
  if [ -x "$here/.venv/bin/lora-blackbox" ]; then
    PATH="$here/.venv/bin:$PATH"
  else
    echo "run_nomad.sh: lora-blackbox is not installed: run 'make install' (or pip install .) first" >&2
    exit 1
  fi
fi
exec lora-blackbox study "$param" ${2:+--dir "$2"} "${@:3}"
