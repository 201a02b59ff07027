# Source THERE, on the GPU machine, at the start of every `run` command (the machine starts bare):
#   source scripts/device/setup.sh [PACK.tar.xz]
# carry: [".whl", "data/debian/debian-shards.tar.xz"], and ".whl-test" for a call that runs the tests (pytest and
# what it needs; scripts/device/fetch_wheels.sh makes both folders here). Installs the carried wheels into /tmp/site,
# puts them and the repository on PYTHONPATH, and restores the token shards from the pack (checksums
# verified) into data/debian/shards unless they are already there.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  $(ls .whl-test/*.whl 2>/dev/null)
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -c "import transformer_lens, sinkinterp.models; print('device setup: transformer-lens', transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '?')"
pack="${1:-data/debian/debian-shards.tar.xz}"
if [ ! -f data/debian/shards/manifest.json ] && [ -f "$pack" ]; then
  if ! python3 -m sinkinterp.data unpack "$pack" data/debian/shards 2>/tmp/unpack.err; then
    # say what arrived, then let GNU tar detect the compression from the content
    tail -1 /tmp/unpack.err; ls -la "$pack"; sha256sum "$pack"; head -c 16 "$pack" | od -A x -t x1z | head -1
    rm -rf data/debian/shards && mkdir -p data/debian/shards && tar -xf "$pack" -C data/debian/shards \
      && echo "device setup: unpacked $pack with tar" || echo "device setup: tar could not unpack $pack either"
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
set +e
