#!/usr/bin/env python3
"""Live heap by category, from heaptrack's folded stacks.

    bench/heap_categories.py LEAKED_STACKS PROXIES [--sites N]

LEAKED_STACKS is `heaptrack_print --flamegraph-cost-type leaked -F FILE`
output: one `frame;frame;... BYTES` line per stack, outermost frame first.
Each stack is put in the category of the innermost frame that names one
(see CATEGORIES), so an allocation made by tonic's encoder on behalf of a
stream counts as the encoder's. With --sites N, also the N largest
allocation sites (the innermost frames outside the standard library).
"""

import collections
import sys

# (category, predicate on one frame "function (file.rs)"), checked from the
# innermost frame outwards; the first match wins.
CATEGORIES = [
    ("tonic encode buffer (per stream)", lambda f: f.startswith("encode_item") or ("(encode.rs)" in f and "poll" in f)),
    ("tonic decode buffer (per stream)", lambda f: "(decode.rs)" in f and ("decode_chunk" in f or "poll_next" in f)),
    (
        "h2 framing buffers (per connection)",
        lambda f: any(x in f for x in ("framed_write.rs", "framed_read.rs", "framed_impl.rs", "length_delimited.rs")),
    ),
    ("DeltaStream state", lambda f: "(delta.rs)" in f),
    ("SotwStream state", lambda f: "(sotw.rs)" in f),
    ("mpsc channels", lambda f: any(x in f for x in ("(chan.rs)", "(block.rs)", "(bounded.rs)"))),
    (
        "shard runtime (snapshot, views, generation)",
        lambda f: "runtime.rs" in f and "tokio" not in f and any(x in f for x in ("publish", "apply", "build", "async_fn")),
    ),
    ("h2 stream state", lambda f: "streams.rs" in f),
    ("tokio tasks", lambda f: "spawn" in f or "new_task" in f),
    ("store / directory", lambda f: any(x in f for x in ("keyspace.rs", "embedded.rs", "source.rs"))),
]

STD_FILES = {
    "node.rs", "map.rs", "entry.rs", "boxed.rs", "sync.rs", "alloc.rs", "unix.rs", "mod.rs", "raw_vec.rs",
    "vec.rs", "set.rs", "string.rs", "slice.rs", "str.rs", "spec_from_iter_nested.rs", "spec_extend.rs",
    "spec_from_iter.rs", "iterator.rs", "mem.rs", "option.rs", "bytes_mut.rs", "bytes.rs", "buffer.rs",
    "lib.rs", "core.rs", "harness.rs", "raw.rs", "unsafe_cell.rs", "function.rs", "impls.rs", "de.rs", "ser.rs",
}


def read(path):
    for line in open(path):
        line = line.rstrip("\n")
        stack, _, count = line.rpartition(" ")
        yield int(count), stack.split(";")


def category(frames):
    for frame in reversed(frames):
        for name, matches in CATEGORIES:
            if matches(frame):
                return name
    return "other"


def site(frames, depth=2):
    kept = []
    for frame in reversed(frames):
        file = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else ""
        if file in STD_FILES or frame.startswith("_RN") or "alloc" in frame:
            continue
        kept.append(frame)
        if len(kept) == depth:
            break
    return " <- ".join(kept)


def main():
    args = sys.argv[1:]
    sites = 0
    if "--sites" in args:
        i = args.index("--sites")
        sites = int(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    path, proxies = args[0], int(args[1])
    rows = list(read(path))
    total = sum(n for n, _ in rows)
    by_category = collections.Counter()
    by_site = collections.Counter()
    for n, frames in rows:
        by_category[category(frames)] += n
        by_site[site(frames)] += n
    print(f"live heap {total / 1e6:.1f} MB ({total / 1e3 / proxies:.1f} KB per proxy, baseline included)")
    for name, n in by_category.most_common():
        print(f"{n / 1e6:8.1f} MB {n / 1e3 / proxies:7.1f} KB/proxy  {name}")
    if sites:
        print()
        for name, n in by_site.most_common(sites):
            print(f"{n / 1e6:8.1f} MB {n / 1e3 / proxies:7.1f} KB/proxy  {name[:200]}")


if __name__ == "__main__":
    main()
