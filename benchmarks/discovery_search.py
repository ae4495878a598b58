"""Discovery lists: verify + parse + index a large organization list, then search it (issue 12).

    .venv/bin/python -m benchmarks.discovery_search [--organizations 5000] [--rounds 7]

No daemon, no network: the lab's signer (tests/lab/discovery.py) makes an
organization list of N organizations with names in several languages and
scripts (Latin with accents, Greek, Cyrillic, Japanese) and signs it
(minisign, prehashed); then, in this process:

- build: `verify_minisig` + `parse_organization_list` + `SearchIndex`, each
  timed, median of `--rounds`;
- search: a few hundred realistic queries (whole names, the first letters of
  a name as it is typed, a word, names without accents or in capitals,
  acronyms from the keywords, Greek and Japanese words, one typo, two words
  in another order, nothing that matches), each timed once (wall and CPU
  time) with the default limit (50): median, p99 and the slowest. The first
  search that needs the lazily built parts (substring and typo search) is
  reported apart.

The same again for 2,000 organizations. Figures, not pass/fail. Recorded
on the shared 2-core development machine while other people's end-to-end
tests ran on it (load average 2.1), CPython 3.11.7, PyNaCl 1.6.2:

    5,000 organizations (1.5 MB): verify 4.2 ms, parse 76 ms, index 246 ms
      search, 370 queries: median 0.96 ms, p99 4.1 ms, max 4.7 ms
      first search needing substring/typo parts: 14.5 ms
    2,000 organizations (0.6 MB): verify 1.9 ms, parse 30 ms, index 84 ms
      search, 370 queries: median 0.76 ms, p99 2.5 ms, max 4.9 ms
      first search needing substring/typo parts: 6.2 ms

A search over 2,000 entries takes well under 10 ms (the brief); the issue's
targets are met for the median query (under 1 ms) but not for p99 (1 ms)
nor for the build (50 ms): JSON decoding and checking every entry in Python
cost most of the parse, folding every name in every language and sorting
the words most of the index. The synthetic list is a hard case (every
name distinct in up to four languages and scripts). The daemon verifies,
parses and indexes in a worker thread after a download, so the event loop
keeps serving, and searches use the previous index until the new one is
ready.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from tests.lab.discovery import LabSigner, organization_list, synthetic_organizations

from vpnd.protocols import discovery as disco
from vpnd.protocols import search as lookup


def _median_ms(timings: Sequence[float]) -> float:
    return statistics.median(timings) * 1000


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _timed(work: Callable[[], Any], rounds: int) -> tuple[list[float], Any]:
    timings = []
    result = None
    for _ in range(rounds):
        start = time.perf_counter()
        result = work()
        timings.append(time.perf_counter() - start)
    return timings, result


def _strip_accents(text: str) -> str:
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _typo(word: str, rng: random.Random) -> str:
    position = rng.randrange(len(word))
    kind = rng.choice(["drop", "add", "change", "swap"])
    if kind == "drop":
        return word[:position] + word[position + 1 :]
    if kind == "add":
        return word[:position] + "e" + word[position:]
    if kind == "change":
        return word[:position] + ("a" if word[position] != "a" else "o") + word[position + 1 :]
    if position + 1 < len(word):
        return word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    return word + "s"


def realistic_queries(organizations: list[dict[str, Any]], seed: int = 5) -> list[str]:
    """Queries a person would type, drawn from the list itself (and some that miss)."""
    rng = random.Random(seed)
    names: list[str] = []
    keywords: list[str] = []
    for org in organizations:
        display = org["display_name"]
        names.extend(display.values() if isinstance(display, dict) else [display])
        keywords.extend(" ".join(org.get("keyword_list", {}).values()).split())
    queries: list[str] = []
    for name in rng.sample(names, 60):
        queries.append(name)  # the whole name
        queries.append(name[: rng.randint(2, 8)])  # typed so far
    for name in rng.sample(names, 50):
        queries.append(rng.choice(name.split()))  # one word
        queries.append(_strip_accents(name).upper())  # no accents, capitals
    for word in rng.sample([w for n in names for w in n.split() if len(w) >= 5], 80):
        queries.append(_typo(word, rng))  # one typo
    for name in rng.sample([n for n in names if len(n.split()) >= 3], 40):
        words = name.split()
        queries.append(f"{words[-1]} {words[0][:4]}")  # two words, other order
    queries += rng.sample(keywords, 20)  # acronyms, campus keywords
    queries += ["Πανεπιστήμιο", "Университет", "大学", "東京", "København", "Zurich"]
    queries += ["zzzq", "no such place", "xylophone institute", "q"]  # misses
    return queries


def build(
    body: bytes, signature: bytes, rounds: int
) -> tuple[lookup.SearchIndex, dict[str, float]]:
    keys = (disco.parse_public_key(SIGNER.public_key),)
    verify, _ = _timed(
        lambda: disco.verify_minisig(body, signature, keys, disco.ORGANIZATION_LIST), rounds
    )
    parse, parsed = _timed(lambda: disco.parse_organization_list(body), rounds)
    entries = lookup.organization_entries(parsed.organizations)
    index_times, index = _timed(lambda: lookup.SearchIndex(entries), rounds)
    figures = {
        "verify": _median_ms(verify),
        "parse": _median_ms(parse),
        "index": _median_ms(index_times),
    }
    figures["build"] = figures["verify"] + figures["parse"] + figures["index"]
    return index, figures


def search_times(
    index: lookup.SearchIndex, queries: list[str]
) -> tuple[list[float], list[float], float]:
    """Each query once, wall and CPU time (after one untimed pass that builds the
    lazy parts); and how long the first search needing those parts took."""
    fresh = lookup.SearchIndex(index.entries)
    start = time.perf_counter()
    fresh.search("zzzq")  # no hit: runs every step, substring and typo included
    first = time.perf_counter() - start
    for query in queries:
        index.search(query)
    wall, cpu = [], []
    for query in queries:
        index._near.clear()  # no help from the previous pass
        start, start_cpu = time.perf_counter(), time.thread_time()
        index.search(query)
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return wall, cpu, first


SIGNER = LabSigner()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--organizations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    lookup.fold("é")  # the combining-mark table, made once per process
    keys = (disco.parse_public_key(SIGNER.public_key),)
    disco.verify_minisig(b"warm", SIGNER.sign(b"warm", "w"), keys, "w")  # imports PyNaCl
    print(
        f"# discovery search, {platform.python_implementation()} {platform.python_version()},"
        f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    for count in dict.fromkeys((args.organizations, 2000)):
        organizations = synthetic_organizations(count)
        body = organization_list(1, organizations)
        signature = SIGNER.sign(body, disco.ORGANIZATION_LIST)
        index, figures = build(body, signature, args.rounds)
        print(
            f"{count} organizations, {len(body) / 1e6:.1f} MB; build (median of {args.rounds}):"
            f" verify {figures['verify']:.1f} ms, parse {figures['parse']:.1f} ms,"
            f" index {figures['index']:.1f} ms, total {figures['build']:.1f} ms"
        )
        queries = realistic_queries(organizations)
        wall, cpu, first = search_times(index, queries)
        for kind, timings in (("wall", wall), ("cpu", cpu)):
            print(
                f"  search ({len(queries)} queries, {kind} time):"
                f" median {_median_ms(timings):.2f} ms,"
                f" p99 {_percentile(timings, 0.99) * 1000:.2f} ms,"
                f" max {max(timings) * 1000:.2f} ms"
            )
        print(f"  first search needing the substring/typo parts: {first * 1000:.1f} ms")


if __name__ == "__main__":
    main()
