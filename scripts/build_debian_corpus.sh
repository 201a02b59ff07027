#!/usr/bin/env bash
# Build an offline pre-training corpus from Debian text packages, then a BPE tokenizer, uint16
# shards and one compressed pack -- no model or data hub involved, only the Debian archive.
#
# Usage (from the repository root; needs root or sudo for apt-get):
#
#     scripts/build_debian_corpus.sh                  # the full recipe, into data/debian/
#     OUT=/tmp/kjv PACKAGES="bible-kjv-text bible-kjv" VOCAB=4096 scripts/build_debian_corpus.sh
#
# Settings (environment variables):
#   OUT            output folder (default data/debian; keep it out of git)
#   PACKAGES       Debian packages to install and read (default: the list below)
#   VOCAB          BPE vocabulary size (default 8192)
#   MAX_DOC_CHARS  split documents longer than this at paragraph breaks (default 20000)
#   VAL_EVERY      every N-th 16384-token block is validation (default 100, i.e. 1%)
#   SKIP_INSTALL   1: do not run apt-get (the packages are already installed)
#   TOKENIZER      an existing tokenizer.json to use instead of training one (token ids then match
#                  models trained on an earlier build, e.g. sinkinterp/assets/models/toy-softmax/
#                  tokenizer.json; Debian's package versions move, and so would a new BPE)
#   SKIP_PACK      1: do not write the .tar.xz pack (the slowest step; only the GPU machine needs it)
#   PYTHON         the Python with sinkinterp's dependencies (default python3)
#
# Output:
#   $OUT/corpus/<package>/...      the collected files (text, HTML, gzip'd docs, dictd .dz)
#   $OUT/tokenizer.json            byte-level BPE, <|endoftext|> = 0 (document separator), <|bos|> = 1
#   $OUT/shards/                   manifest.json, tokenizer.json, train_*.bin, val_*.bin
#   $OUT/debian-shards.tar.xz      the shard folder, xz -9e; restore with
#                                  `python -m sinkinterp.data unpack $OUT/debian-shards.tar.xz DIR`
#
# The default package list gave 146 MB of text and 46.7M tokens with an 8k BPE (Debian 12), about
# 35 MB packed. bible-kjv-text ships the King James Bible in a compressed binary format; its reader
# `bible` (package bible-kjv) dumps it, one file per book. Paths are collected from `dpkg -L` under
# /usr/share/{doc,dictd,wordnet,perl,perl5}; man pages (troff), images, scripts and style sheets are
# left out, and sinkinterp's corpus reader skips whatever else is binary or not UTF-8.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-data/debian}"
PACKAGES="${PACKAGES:-linux-doc python3.11-doc perl-doc postgresql-doc-15 dict-gcide wordnet-base bible-kjv-text bible-kjv}"
VOCAB="${VOCAB:-8192}"
MAX_DOC_CHARS="${MAX_DOC_CHARS:-20000}"
VAL_EVERY="${VAL_EVERY:-100}"
SKIP_INSTALL="${SKIP_INSTALL:-0}"
TOKENIZER="${TOKENIZER:-}"
SKIP_PACK="${SKIP_PACK:-0}"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
data() { "$PYTHON" -m sinkinterp.data "$@"; }
stamp() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(stamp)" 'BEGIN { printf "%.1f s", b - a }'; }

t_all=$(stamp)

# 1. Install the packages (the only network access: the Debian archive).
if [ "$SKIP_INSTALL" != 1 ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    t=$(stamp)
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # PACKAGES is a word list
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $PACKAGES
    echo "== installed $PACKAGES in $(elapsed "$t")"
fi

# 2. Collect their text files into $OUT/corpus/<package>/<original path>.
t=$(stamp)
CORPUS="$OUT/corpus"
rm -rf "$CORPUS"
mkdir -p "$CORPUS"
# the installed packages that hold a package's files: itself, or for a meta-package (linux-doc ->
# linux-doc-6.1) its dependencies whose names start with its own
package_files() {
    dpkg -L "$1" 2>/dev/null || true
    { dpkg-query -W -f='${Depends}' "$1" 2>/dev/null || true; } | tr ',' '\n' | awk '{print $1}' \
        | { grep -E "^$1-" || true; } | while IFS= read -r dep; do dpkg -L "$dep" 2>/dev/null || true; done
}
for pkg in $PACKAGES; do
    dest="$CORPUS/$pkg"
    mkdir -p "$dest"
    # each stage may select nothing (grep exits 1): that is not an error under pipefail
    package_files "$pkg" \
        | { grep -E '^/usr/share/(doc|dictd|wordnet|perl5?)/' || true; } \
        | { grep -Ev '\.(png|jpe?g|gif|svg|ico|js|css|map|woff2?|ttf|otf|eot|pdf|inv|pickle|doctree)(\.gz)?$' || true; } \
        | { grep -Ev '^/usr/share/dictd/.*\.index$' || true; } \
        | while IFS= read -r f; do if [ -f "$f" ] && [ ! -L "$f" ]; then printf '%s\0' "$f"; fi; done \
        | xargs -0 -r cp --parents -t "$dest"
    echo "   $pkg: $(find "$dest" -type f | wc -l) files"
    if [ "$pkg" = bible-kjv ] && command -v bible >/dev/null; then
        mkdir -p "$dest/books"
        # `bible` prints "Book N" chapter headings after a blank line; start a file per book
        bible gen1:1-rev22:21 | awk -v out="$dest/books" '
            prev_blank && /^[^ ].* [0-9]+$/ {
                b = $0; sub(/ [0-9]+$/, "", b)
                if (b != book) { book = b; n++; name = b; gsub(/ /, "_", name); f = sprintf("%s/%02d-%s.txt", out, n, name) }
            }
            { if (f) print > f; prev_blank = ($0 == "") }'
    fi
done
echo "== collected $(find "$CORPUS" -type f | wc -l) files, $(du -sh "$CORPUS" | cut -f1) on disk, in $(elapsed "$t")"

# 3. Train the tokenizer on the whole corpus (or take the given one).
t=$(stamp)
if [ -n "$TOKENIZER" ]; then
    [ -f "$TOKENIZER" ] || { echo "TOKENIZER=$TOKENIZER: no such file" >&2; exit 2; }
    [ "$(realpath "$TOKENIZER")" = "$(realpath -m "$OUT/tokenizer.json")" ] || cp "$TOKENIZER" "$OUT/tokenizer.json"
    echo "== tokenizer: $TOKENIZER (not trained)"
else
    data build-tokenizer "$CORPUS" --out "$OUT/tokenizer.json" --vocab-size "$VOCAB" --max-doc-chars "$MAX_DOC_CHARS"
    echo "== tokenizer in $(elapsed "$t")"
fi

# 4. Tokenize into shards (EOS after every document; 1 block in VAL_EVERY is validation).
t=$(stamp)
data build-shards "$CORPUS" --tokenizer "$OUT/tokenizer.json" --out "$OUT/shards" \
    --max-doc-chars "$MAX_DOC_CHARS" --val-every "$VAL_EVERY" --overwrite
echo "== shards in $(elapsed "$t")"

# 5. One compressed pack for machines that only receive a few tens of MB.
if [ "$SKIP_PACK" != 1 ]; then
    t=$(stamp)
    data pack "$OUT/shards" "$OUT/debian-shards.tar.xz"
    echo "== pack in $(elapsed "$t")"
    ls -l "$OUT/debian-shards.tar.xz"
fi
echo "== all done in $(elapsed "$t_all")"
