#!/usr/bin/env python3
"""Seeded benchmark corpora for scripts/bench.

  bench-corpus.py gen  --shape source|mixed --size MIB --seed N DIR
  bench-corpus.py change --seed N --fraction 0.01 --undo UNDO_DIR DIR
  bench-corpus.py undo UNDO_DIR DIR

Shapes:
  source  thousands of small source-like text files (sizes log-normal,
          median ~4 KiB), a shared licence header, Zipf-distributed names.
  mixed   small text files (15%), MB-size incompressible binaries (30%),
          large compressible logs/dumps (30%), large incompressible files (25%).

`change` rewrites a seeded 1% of the files in place (a text region or a
4 KiB binary block), as a live application does: untouched files keep
their metadata. It saves the originals (with their times) so `undo` can
put the tree back byte for byte.
"""
import argparse
import itertools
import json
import math
import os
import random
import shutil
import sys

SYLL = ["ba", "ck", "me", "sh", "no", "de", "pa", "th", "st", "or", "re", "ad", "wr", "it", "lo", "g",
        "se", "rv", "er", "cl", "ie", "nt", "co", "nf", "ig", "da", "ta", "ar", "ch", "iv", "ma", "ni", "fe"]
KEYWORDS = ["fn", "let", "mut", "if", "else", "match", "return", "for", "in", "while", "impl", "pub",
            "struct", "enum", "use", "self", "Self", "Some", "None", "Ok", "Err", "async", "await"]
LICENSE = "".join(f"// {line}\n" for line in [
    "Copyright (c) The Example Authors. All rights reserved.",
    "Licensed under the Apache License, Version 2.0 (the \"License\");",
    "you may not use this file except in compliance with the License.",
    "You may obtain a copy of the License at",
    "",
    "    http://www.apache.org/licenses/LICENSE-2.0",
    "",
    "Unless required by applicable law or agreed to in writing, software",
    "distributed under the License is distributed on an \"AS IS\" BASIS,",
    "WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.",
])


class Vocab:
    def __init__(self, rng, n=4000):
        words = set()
        while len(words) < n:
            words.add("".join(rng.choice(SYLL) for _ in range(rng.randint(1, 4))))
        self.words = sorted(words)
        rng.shuffle(self.words)
        # Zipf weights, cumulative for bisect-free sampling via random.choices.
        self.cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(self.words))))

    def sample(self, rng, k):
        return rng.choices(self.words, cum_weights=self.cum, k=k)


def source_text(rng, vocab, size):
    out = [LICENSE]
    n = len(LICENSE)
    depth = 0
    while n < size:
        k = rng.randint(3, 8)
        words = vocab.sample(rng, k)
        kind = rng.random()
        if kind < 0.15:
            line = f"{'    ' * depth}{rng.choice(KEYWORDS)} {words[0]}_{words[1]}({', '.join(words[2:])}) {{\n"
            depth = min(depth + 1, 6)
        elif kind < 0.27 and depth > 0:
            depth -= 1
            line = f"{'    ' * depth}}}\n"
        elif kind < 0.35:
            line = f"{'    ' * depth}// {' '.join(words)}\n"
        else:
            line = (f"{'    ' * depth}let {words[0]} = {words[1]}.{words[2]}"
                    f"({', '.join(words[3:])}{', ' if k > 3 else ''}{rng.randint(0, 999)});\n")
        out.append(line)
        n += len(line)
    return "".join(out)[:size].encode()


def log_text(rng, vocab, size):
    out = []
    n = 0
    t = 1_700_000_000
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
    while n < size:
        t += rng.randint(0, 3)
        w = vocab.sample(rng, 5)
        line = (f"2026-11-{(t // 86400) % 28 + 1:02d}T{(t // 3600) % 24:02d}:{(t // 60) % 60:02d}:{t % 60:02d}Z "
                f"{rng.choice(levels)} [{w[0]}::{w[1]}] request_id={rng.getrandbits(32):08x} "
                f"{w[2]} {w[3]} took={rng.randint(1, 5000)}ms user={w[4]}\n")
        out.append(line)
        n += len(line)
    return "".join(out)[:size].encode()


def lognormal_size(rng, median, sigma, lo, hi):
    return int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))


def gen(args):
    rng = random.Random(args.seed)
    vocab = Vocab(rng)
    total = args.size * 1024 * 1024
    root = args.dir
    os.makedirs(root, exist_ok=True)
    dirs = [""]
    for i in range(max(8, total // (2 << 20))):
        parent = rng.choice(dirs)
        if parent.count("/") < 6:
            dirs.append(os.path.join(parent, "_".join(vocab.sample(rng, 2))))
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    exts = [".rs", ".py", ".go", ".c", ".h", ".js", ".toml", ".md"]

    def put(data_fn, size, ext):
        d = rng.choice(dirs)
        name = "_".join(vocab.sample(rng, rng.randint(1, 3))) + f"_{rng.getrandbits(20):05x}" + ext
        with open(os.path.join(root, d, name), "wb") as f:
            f.write(data_fn(size))
        return size

    budget = {
        "source": [(1.0, "text")],
        "mixed": [(0.15, "text"), (0.30, "binary"), (0.30, "log"), (0.25, "bigbin")],
    }[args.shape]
    for share, kind in budget:
        want = int(total * share)
        made = 0
        while made < want:
            if kind == "text":
                size = lognormal_size(rng, 4096, 1.0, 64, 256 * 1024)
                made += put(lambda s: source_text(rng, vocab, s), size, rng.choice(exts))
            elif kind == "binary":
                size = rng.randint(1 << 20, 6 << 20)
                made += put(rng.randbytes, size, rng.choice([".jpg", ".png", ".zip", ".pdf"]))
            elif kind == "log":
                size = min(want - made, rng.randint(20 << 20, 80 << 20)) or 1
                made += put(lambda s: log_text(rng, vocab, s), size, ".log")
            else:
                size = min(want - made, rng.randint(60 << 20, 160 << 20)) or 1
                made += put(rng.randbytes, size, ".bin")
    # Old, settled metadata, like a tree that has been in place a while.
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames:
            t = 1_700_000_000 + rng.randint(0, 10_000_000)
            os.utime(os.path.join(dirpath, n), ns=(t * 10**9, t * 10**9 + rng.randint(0, 10**9 - 1)))


def files_of(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def change(args):
    rng = random.Random(args.seed)
    files = files_of(args.dir)
    k = max(1, round(len(files) * args.fraction))
    chosen = rng.sample(files, k)
    os.makedirs(args.undo, exist_ok=True)
    undo = []
    changed_bytes = 0
    for i, rel in enumerate(chosen):
        p = os.path.join(args.dir, rel)
        st = os.stat(p)
        saved = os.path.join(args.undo, f"{i}")
        shutil.copyfile(p, saved)
        undo.append({"rel": rel, "saved": saved, "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns})
        with open(p, "r+b") as f:
            size = st.st_size
            n = min(4096, size)
            off = rng.randint(0, max(0, size - n))
            f.seek(off)
            f.write(rng.randbytes(n) if rel.endswith((".bin", ".jpg", ".png", ".zip", ".pdf"))
                    else bytes(rng.choice(b"abcdefghij \n") for _ in range(n)))
            changed_bytes += n
    with open(os.path.join(args.undo, "undo.json"), "w") as f:
        json.dump(undo, f)
    print(json.dumps({"files": len(files), "changed_files": k, "changed_bytes": changed_bytes}))


def undo(args):
    with open(os.path.join(args.undo, "undo.json")) as f:
        entries = json.load(f)
    for e in entries:
        p = os.path.join(args.dir, e["rel"])
        shutil.copyfile(e["saved"], p)
        os.utime(p, ns=(e["atime_ns"], e["mtime_ns"]))
    shutil.rmtree(args.undo)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--shape", choices=["source", "mixed"], required=True)
    g.add_argument("--size", type=int, default=1024, help="MiB")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("dir")
    c = sub.add_parser("change")
    c.add_argument("--seed", type=int, default=2)
    c.add_argument("--fraction", type=float, default=0.01)
    c.add_argument("--undo", required=True)
    c.add_argument("dir")
    u = sub.add_parser("undo")
    u.add_argument("undo")
    u.add_argument("dir")
    args = ap.parse_args()
    {"gen": gen, "change": change, "undo": undo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
