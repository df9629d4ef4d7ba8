#!/usr/bin/env bash
# The wheels that a GPU machine without a package registry lacks, for benchmarks/gpu_check.sh (docs/gpu.md).
# Run here, in the repository's root, with pip and PyPI:   bash benchmarks/gpu_wheels.sh [FOLDER]   (default .whl)
#
# The device machine's image (Python 3.12, torch 2.11 + CUDA 13.0, transformers, peft, accelerate, pandas, pyarrow,
# scipy, scikit-learn, sacrebleu, triton, ...) lacks pydantic, datasets, bitsandbytes, liger-kernel, PyNomadBBO,
# lm-eval and some of their needs: these, at the versions the CPU tests run with. rouge-score, sqlitedict and
# word2number exist only as source: built into wheels here (pure Python). bitsandbytes' wheel holds a library for
# every CUDA version (43 MB): only its CPU and CUDA 13 libraries are kept (7 MB), which the 64 MiB that a
# device call carries needs. The nomad binary too, when the development machine has one (../shared/tools, or
# NOMAD_DIR): its executable and libraries under their sonames (7 MB), for the check's study with the binary.
# Prints the folder's size at the end.
set -euo pipefail
DEST=${1:-.whl}
NOMAD_DIR=${NOMAD_DIR:-../shared/tools/nomad-4.5.1}
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$DEST" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    bitsandbytes==0.50.2 liger-kernel==0.8.5 PyNomadBBO==4.6.0 \
    lm-eval==0.4.13 evaluate==0.4.6 more-itertools==11.2.1 nltk==3.10.4 defusedxml==0.7.1 \
    pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 chardet==6.0.0.post1 pathvalidate==3.3.1 \
    tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5
python3 -m pip wheel -q --no-deps -w "$DEST" rouge-score==0.1.2 sqlitedict==2.1.0 word2number==1.1
# bitsandbytes: keep the CPU and CUDA 13 libraries (torch 2.11+cu130 there), drop the rest and their RECORD lines.
python3 - "$DEST" <<'EOF'
import pathlib, re, sys, zipfile

for wheel in pathlib.Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    drop = re.compile(r"bitsandbytes/libbitsandbytes_(?!cpu|cuda13)[a-z0-9]+\.(so|dll|dylib)$")
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if drop.match(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not drop.match(line.split(",")[0])).encode()
            target.writestr(item, data)
    slim.replace(wheel)
EOF
# The nomad binary finds its libraries by soname in $ORIGIN/../lib: real files under those names (no links).
if [ -x "$NOMAD_DIR/bin/nomad-4.5.1" ]; then
    rm -rf "$DEST/nomad"
    mkdir -p "$DEST/nomad/bin" "$DEST/nomad/lib"
    cp "$NOMAD_DIR/bin/nomad-4.5.1" "$DEST/nomad/bin/nomad"
    for library in libnomadAlgos.so.4.5 libnomadEval.so.4.5 libnomadUtils.so.4.5 libsgtelib.so.2.0; do
        cp "$(ls "$NOMAD_DIR"/lib/"$library".* | head -1)" "$DEST/nomad/lib/$library"
    done
fi
du -sh "$DEST"
