#!/usr/bin/env bash
# Run HERE (not on the GPU machine): download the wheels the GPU machine lacks into .whl/ (git-ignored
# through .git/info/exclude), for Python 3.12 on x86-64 as the device README prescribes. The GPU image
# has torch, transformers, einops, jaxtyping, typeguard-free tokenizers, pandas, pyarrow, xxhash, ...
# but not transformer-lens (our models build on its HookedRootModule) nor the few packages it imports
# at import time (better-abc, datasets -> dill, multiprocess), nor pytest (+ pluggy, iniconfig,
# pygments, beartype: the suite's run-time type checks) for running tests/test_triton_attention.py on the GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Two folders: .whl (what sinkinterp needs to run there, 2.4 MB) and .whl-test (pytest and the rest, 3.3 MB):
# a call that runs no tests carries .whl alone, which keeps the tracked tree, the wheels and the corpus pack
# under the device's 64 MiB transfer limit (tests/test_device_budget.py).
mkdir -p .git/info .whl .whl-test
for d in /.whl/ /.whl-test/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
download() {
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
download .whl transformer-lens==3.9.0 better-abc==0.0.3 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
download .whl-test pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 beartype==0.23.1
rm -f .whl/pytest-* .whl/pluggy-* .whl/iniconfig-* .whl/pygments-* .whl/beartype-*  # from before the split
ls -la .whl .whl-test
