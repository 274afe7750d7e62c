#!/usr/bin/env python3
"""Formats scripts/bench's results file as markdown, with the targets checked."""
import collections
import platform
import subprocess
import sys
import datetime

r = collections.defaultdict(dict)
meta = {}
for line in open(sys.argv[1]):
    shape, key, value = line.split()
    if shape == "all":
        meta[key] = value
        continue
    r[shape][key] = float(value)

MiB = 1024 * 1024


def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def nproc():
    return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()


print(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {nproc()} cores ({cpu()}), "
      f"{platform.system()} {platform.release()}; corpus in the page cache, outputs on {meta.get('out_fs', '?')}; "
      f"unchanged re-runs and restores are the median of 3; `scripts/bench`.\n")
checks = []
for shape, d in r.items():
    g = d.get
    if shape in ("mesh", "mesh-source", "django", "large", "offsite", "browse"):
        continue
    print(f"### {shape} corpus: {int(g('files'))} files, {g('bytes') / MiB:.0f} MiB, {int(g('changed_files'))} files changed for the 1% step\n")
    print("| | backmesh | tar -czf | tar -I pigz | restic | borg | floor / rsync |")
    print("|---|---|---|---|---|---|---|")

    def row(label, vals):
        print(f"| {label} | " + " | ".join(vals) + " |")

    def s(k):
        return f"{g(k):.2f} s" if k in d else "—"

    def m(k, div=MiB):
        return f"{g(k) / div:.1f} MiB" if k in d else "—"

    row("create: wall time", [s("bm.create.wall"), s("tar.create.wall"), s("pigz.create.wall"), s("restic.create.wall"), s("borg.create.wall"), "—"])
    t = g("tar.create.wall")
    row("create: speed vs tar -czf", [f"{t / g(k):.2f}×" for k in ["bm.create.wall", "tar.create.wall", "pigz.create.wall", "restic.create.wall", "borg.create.wall"]] + ["—"])
    row("create: output size", [m("bm.size"), m("tar.size"), m("pigz.size"), m("restic.size"), m("borg.size"), "—"])
    ts = g("tar.size")
    row("create: size vs tar -czf", [f"{g(k) / ts:.3f}×" for k in ["bm.size", "tar.size", "pigz.size", "restic.size", "borg.size"]] + ["—"])
    row("create: peak RSS", [m(k, 1024) for k in ["bm.create.rss", "tar.create.rss", "pigz.create.rss", "restic.create.rss", "borg.create.rss"]] + ["—"])
    row("unchanged re-run: wall time", [s("bm.unchanged.wall"), "—", "—", s("restic.unchanged.wall"), s("borg.unchanged.wall"), s("find.unchanged.wall") + " (find)"])
    fl = max(g("find.unchanged.wall"), 0.01)
    row("unchanged re-run: vs find floor", [f"{g('bm.unchanged.wall') / fl:.2f}×", "—", "—", f"{g('restic.unchanged.wall') / fl:.2f}×", f"{g('borg.unchanged.wall') / fl:.2f}×", "1×"])
    row("1% change: new bytes", [m("bm.new"), "—", "—", m("restic.new"), m("borg.new"), m("rsync.new") + " (literal)"])
    row("1% change: % of archive", [f"{100 * g(k) / g('bm.size'):.1f}%" for k in ["bm.new"]] + ["—", "—"] + [f"{100 * g(k) / g('bm.size'):.1f}%" for k in ["restic.new", "borg.new", "rsync.new"]])
    row("1% change: wall time", [s("bm.change.wall"), "—", "—", s("restic.change.wall"), s("borg.change.wall"), s("rsync.change.wall")])
    bc = g("bm.change.wall")
    row("1% change: backmesh faster by", [ "—", "—", "—", f"{g('restic.change.wall') / bc:.2f}×", f"{g('borg.change.wall') / bc:.2f}×", "—"])
    row("restore: wall time", [s("bm.restore.wall"), s("tar.restore.wall"), "—", s("restic.restore.wall"), "—", "—"])
    row("restore: speed vs tar -xzf", [f"{g('tar.restore.wall') / g('bm.restore.wall'):.2f}×", "1×", "—", f"{g('tar.restore.wall') / g('restic.restore.wall'):.2f}×", "—", "—"])
    row("restore: peak RSS", [m("bm.restore.rss", 1024), m("tar.restore.rss", 1024), "—", m("restic.restore.rss", 1024), "—", "—"])
    print()
    size_goal = 1.10 if shape == "source" else 1.03
    checks += [
        (shape, "create ≥ 2× faster than tar -czf", t / g("bm.create.wall"), 2.0, True),
        (shape, f"archive ≤ {size_goal}× tar -czf", g("bm.size") / ts, size_goal, False),
        (shape, "unchanged re-run ≤ 2× find", g("bm.unchanged.wall") / fl, 2.0, False),
        (shape, "1% change new bytes ≤ 3% of archive", 100 * g("bm.new") / g("bm.size"), 3.0, False),
        (shape, "1% change ≥ 1.5× faster than restic", g("restic.change.wall") / bc, 1.5, True),
        (shape, "1% change ≥ 1.5× faster than borg", g("borg.change.wall") / bc, 1.5, True),
        (shape, "restore ≥ 1.3× faster than tar -xzf", g("tar.restore.wall") / g("bm.restore.wall"), 1.3, True),
        (shape, "peak RSS < 200 MiB (create, restore)", max(g("bm.create.rss"), g("bm.restore.rss")) / 1024, 200, False),
    ]
    curve = sorted({int(k.split(".")[1]) for k in d if k.startswith("curve.")})
    if curve:
        print(f"Cut-policy curve ({shape}): group target → archive size, 1%-change new bytes, and the storage "
              "of 10 retained archives (the first + 9 such changes) against 10 × tar -czf\n")
        print("| target | members | size vs tar -czf | 1% change new bytes | 10 archives stored vs 10 tar.gz |")
        print("|---|---|---|---|---|")
        for c in curve:
            size = g(f"curve.{c}.size")
            new = g(f"curve.{c}.new")
            print(f"| {c} KiB | {int(g(f'curve.{c}.members'))} | {size / ts:.3f}× | {100 * new / size:.1f}% "
                  f"| {(size + 9 * new) / (10 * ts):.3f}× |")
        print()

for mesh, kind, most in (("mesh", "mixed", 2.0), ("mesh-source", "source", 3.0)):
    if mesh not in r:
        continue
    d = r[mesh]
    g = d.get
    size = g("archive.size")
    print(f"### {mesh}: 3 nodes on 127.0.0.1, 2 holders per series, the {kind} corpus ({size / MiB:.0f} MiB archive)\n")
    print("| | backmesh (per holder) | rsync -a to one peer | rsync -az to one peer | plain copy ×2 |")
    print("|---|---|---|---|---|")
    print(f"| first copy: bytes sent | {g('first.bytes') / MiB:.1f} MiB ({g('first.bytes') / size:.3f}× the archive) "
          f"| {g('rsync.first.sent') / MiB:.1f} MiB | {g('rsyncz.first.sent') / MiB:.1f} MiB | — |")
    print(f"| first copy: wall time | {g('first.secs'):.2f} s to both holders | {g('rsync.first.wall'):.2f} s "
          f"| {g('rsyncz.first.wall'):.2f} s | {g('cp.twice.wall'):.2f} s |")
    print(f"| 1% change: bytes sent | {g('change.bytes') / MiB:.2f} MiB ({100 * g('change.bytes') / size:.2f}% of the archive) "
          f"| — | {g('rsyncz.change.sent') / MiB:.2f} MiB | — |")
    print(f"| 1% change: wall time to both holders | {g('change.secs'):.2f} s | — | {g('rsyncz.change.wall'):.2f} s | — |")
    print(f"| unchanged run: copies sent | {int(g('unchanged.copies'))} | — | — | — |")
    print(f"| peak RSS of a node | holder {g('holder.rss') / 1024:.0f} MiB, origin {g('origin.rss') / 1024:.0f} MiB "
          f"(whole run) | — | — | — |")
    print()
    print("Bytes sent are member bytes (the payload); the mesh adds Noise and Yamux framing, under 1%. "
          "Wall times run from the `finished` entry to the last `replicated` entry, both from the log.\n")
    checks += [
        (mesh, "unchanged run sends nothing (copies)", g("unchanged.copies"), 0, False),
        (mesh, f"1% change sends ≤ {most:.0f}% of the archive", 100 * g("change.bytes") / size, most, False),
        (mesh, "1% change sends ≤ rsync -az", g("change.bytes") / g("rsyncz.change.sent"), 1.0, False),
        (mesh, "holder peak RSS < 200 MiB", g("holder.rss") / 1024, 200, False),
    ]

if "django" in r:
    d = r["django"]
    g = d.get
    bc = g("bm.change.wall")
    print(f"### django: real source (Django 5.0.1 and SymPy 1.12 sdists, {int(g('files'))} files, "
          f"{g('bytes') / MiB:.0f} MiB), updated as Django 5.0.2 changes it ({int(g('changed_files'))} files written)\n")
    print("| | backmesh | restic | borg | rsync -az |")
    print("|---|---|---|---|---|")
    print(f"| first backup: wall time | {g('bm.create.wall'):.2f} s | {g('restic.create.wall'):.2f} s | {g('borg.create.wall'):.2f} s | — |")
    print(f"| changed run: wall time | {bc:.2f} s | {g('restic.change.wall'):.2f} s | {g('borg.change.wall'):.2f} s "
          f"| {g('rsyncz.change.wall'):.2f} s |")
    print(f"| changed run: backmesh faster by | — | {g('restic.change.wall') / bc:.2f}× | {g('borg.change.wall') / bc:.2f}× | — |")
    print(f"| changed run: new bytes stored | {g('bm.new') / 1024:.0f} KiB | {g('restic.new') / 1024:.0f} KiB | — | — |")
    print(f"| changed run: bytes to a holder | {g('mesh.change.bytes') / 1024:.0f} KiB (2-node mesh) | — | — "
          f"| {g('rsyncz.change.sent') / 1024:.0f} KiB sent |")
    sealed = g("bm.create.sealed.wall") is not None
    if sealed:
        bcs = g("bm.change.sealed.wall")
        print(f"| sealed (encrypt = on): first backup | {g('bm.create.sealed.wall'):.2f} s "
              f"({g('bm.create.sealed.wall') / g('bm.create.wall'):.2f}× plain) | — | — | — |")
        print(f"| sealed: changed run | {bcs:.2f} s (backmesh faster by:) | {g('restic.change.wall') / bcs:.2f}× | "
              f"{g('borg.change.wall') / bcs:.2f}× | — |")
        print(f"| sealed: changed run, new bytes stored | {g('bm.new.sealed') / 1024:.0f} KiB | — | — | — |")
        print(f"| sealed: bytes to a holder | {g('mesh.change.bytes.sealed') / 1024:.0f} KiB (2-node mesh) | — | — "
              f"| {g('rsyncz.change.sent') / 1024:.0f} KiB sent |")
    print()
    if sealed:
        checks += [
            ("django", "sealed first backup ≤ 1.10× plain", g("bm.create.sealed.wall") / g("bm.create.wall"), 1.10, False),
            ("django", "sealed changed run ≥ 1.5× faster than restic", g("restic.change.wall") / g("bm.change.sealed.wall"), 1.5, True),
            ("django", "sealed changed run ≥ 1.5× faster than borg (repokey)", g("borg.change.wall") / g("bm.change.sealed.wall"), 1.5, True),
            ("django", "sealed bytes to a holder ≤ 1.0× rsync -az", g("mesh.change.bytes.sealed") / g("rsyncz.change.sent"), 1.0, False),
        ]
    checks += [
        ("django", "changed run ≥ 1.5× faster than restic", g("restic.change.wall") / bc, 1.5, True),
        ("django", "changed run ≥ 1.5× faster than borg", g("borg.change.wall") / bc, 1.5, True),
        ("django", "bytes to a holder ≤ 1.2× rsync -az", g("mesh.change.bytes") / g("rsyncz.change.sent"), 1.2, False),
    ]

if "large" in r:
    d = r["large"]
    g = d.get
    compress = g("bm.create.wall") * g("changed_file_bytes") / g("bytes")
    floor = g("find.unchanged.wall")
    budget = 2 * floor + compress
    print(f"### large: {int(g('files'))} files, {g('bytes') / MiB / 1024:.1f} GiB (mixed kind), "
          f"{int(g('changed_files'))} files changed ({g('changed_file_bytes') / MiB:.1f} MiB)\n")
    print("| first backup | metadata scan (find) | changed run | compressing the changed files (at the first backup's rate) | budget: 2 × scan + that |")
    print("|---|---|---|---|---|")
    print(f"| {g('bm.create.wall'):.2f} s | {floor:.2f} s | {g('bm.change.wall'):.2f} s | {compress:.2f} s | {budget:.2f} s |")
    print()
    checks += [("large", "changed run ≤ 2 × scan + compressing the changed files", g("bm.change.wall") / budget, 1.0, False)]

if "offsite" in r:
    d = r["offsite"]
    g = d.get
    size = g("archive.size")
    rate = lambda b, t: f"{b / MiB / t:.0f} MiB/s" if t > 0 else "—"
    print(f"### offsite: one node uploads the mixed corpus's archives ({size / MiB:.0f} MiB) to s3s-fs on 127.0.0.1\n")
    print("| | backmesh upload | plain upload of the .tgz (boto3) | restic backup to the same server |")
    print("|---|---|---|---|")
    print(f"| first backup: time | {g('first.secs'):.2f} s | {g('plain.upload.wall'):.2f} s | {g('restic.create.wall'):.2f} s |")
    print(f"| first backup: throughput | {rate(g('first.bytes'), g('first.secs'))} | {rate(size, g('plain.upload.wall'))} | — |")
    print(f"| first backup: bytes sent | {g('first.bytes') / MiB:.1f} MiB | {size / MiB:.1f} MiB | — |")
    print(f"| 1% change: time | {g('change.secs'):.2f} s | — | {g('restic.change.wall'):.2f} s |")
    print(f"| 1% change: bytes sent | {g('change.bytes') / MiB:.2f} MiB | — | {g('restic.change.new') / MiB:.2f} MiB added |")
    print()
    print("backmesh's times are the upload alone (the archive is made by then: docs/benchmarks.md, mixed); "
          "restic's include reading and packing the tree, which is what its users wait for before the copy is offsite.\n")
    checks += [
        ("offsite", "first upload ≥ 0.5× a plain upload's throughput", (g("first.bytes") / g("first.secs")) / (size / g("plain.upload.wall")), 0.5, True),
        ("offsite", "1% change sends ≤ 3% of the archive", 100 * g("change.bytes") / size, 3.0, False),
    ]

if "browse" in r:
    d = r["browse"]
    g = d.get
    size = g("archive.size")
    print(f"### browse: one file out of a {size / MiB / 1024:.2f} GiB sealed archive ({int(g('files'))} files, "
          f"{g('bytes') / MiB / 1024:.1f} GiB of the mixed kind), 3 nodes, 2 holders\n")
    print("| | time | members read | stored bytes read | of the archive |")
    print("|---|---|---|---|---|")
    for via, label in [("own", "through the series' node (opened there)"),
                       ("holder", "through a holder (the CLI opens it with the operator key)")]:
        read = g(f"dump.{via}.bytes_read")
        print(f"| `dump` of one {g('small.size') / 1024:.1f} KiB file {label} | {g(f'dump.{via}.wall'):.2f} s | "
              f"{int(g(f'dump.{via}.members_read'))} of {int(g(f'dump.{via}.members'))} | {read / 1024:.0f} KiB | "
              f"{100 * read / size:.4f}% |")
    print()
    t = g("tar.restore.wall")
    print("| whole restore | backmesh through the mesh (on a holder) | `tar -xzf` of the fetched archive | restic restore |")
    print("|---|---|---|---|")
    print(f"| wall time | {g('bm.restore.wall'):.2f} s | {t:.2f} s | {g('restic.restore.wall'):.2f} s |")
    print(f"| vs tar -xzf | {t / g('bm.restore.wall'):.2f}× | 1.00× | {t / g('restic.restore.wall'):.2f}× |")
    print()
    checks += [
        ("browse", "one small file through a holder in < 1 s", g("dump.holder.wall"), 1.0, False),
        ("browse", "one small file through its node in < 1 s", g("dump.own.wall"), 1.0, False),
    ]

print("### Targets\n")
print("| corpus | target | measured | met |")
print("|---|---|---|---|")
for shape, name, val, goal, higher in checks:
    ok = val >= goal if higher else val <= goal
    unit = " s" if name.endswith("< 1 s") else "×" if name.endswith("rsync -az") else "%" if "% of" in name else (" MiB" if "MiB" in name else ("" if "copies" in name else "×"))
    print(f"| {shape} | {name} | {val:.2f}{unit} | {'yes' if ok else '**no**'} |")
