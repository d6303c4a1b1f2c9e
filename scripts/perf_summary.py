"""Where the cycles go, by stage, from a `perf record` of hubflow.

    perf report -i perf.data --no-children --sort dso,symbol --stdio -g none \
        | python perf_summary.py

Groups symbols into the parts of the data path (JSON parsing, allocation,
zstd, Parquet/Arrow, SQLite, hashing, the kernel) and prints a markdown
table of their shares of all samples.
"""

import re
import sys

GROUPS = [
    ("allocation (malloc/free)", r"malloc|_int_free|cfree|free@|unlink_chunk|mi_|_mi_|realloc|calloc|sdallocx|je_"),
    ("JSON parse/print (serde_json, tape, scan)", r"serde_json|curated::tape|source::scan|indexmap|parse_str|skip_to_escape|from_utf8|format_escaped"),
    ("zstd (raw + Parquet pages)", r"ZSTD_|zstd|HUF_|FSE_"),
    ("Parquet/Arrow encoding", r"parquet::|arrow_|arrow::"),
    ("SQLite (embedded hub)", r"sqlite3|rusqlite"),
    ("hashing (ids, dedupe, maps)", r"hash|sip::|xxh3|XXH|sha2|Sha256|foldhash"),
    ("memcpy/memcmp", r"memmove|memcpy|memcmp|memset|rep_movs"),
    ("rkyv (raw archive)", r"rkyv|bytecheck"),
    ("curate (columns, inference)", r"formats::curated"),
    ("kernel (syscalls, scheduling, page faults, fsync)", r"\[k\]"),
]


def main():
    shares = {name: 0.0 for name, _ in GROUPS}
    other = 0.0
    tops = []
    for line in sys.stdin:
        m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+(\[.\])\s+(.*)$", line)
        if not m:
            continue
        pct = float(m.group(1))
        text = f"{m.group(2)} {m.group(3)} {m.group(4)}"
        tops.append((pct, m.group(4).strip()[:90]))
        for name, pattern in GROUPS:
            if re.search(pattern, text):
                shares[name] += pct
                break
        else:
            other += pct
    print("| part | share of samples |")
    print("|---|---|")
    for name, _ in GROUPS:
        print(f"| {name} | {shares[name]:.1f}% |")
    print(f"| other (runtime, tokio, actors, HTTP) | {other:.1f}% |")
    print()
    print("Top symbols:")
    for pct, sym in sorted(tops, reverse=True)[:15]:
        print(f"- {pct:.2f}% {sym}")


if __name__ == "__main__":
    main()
