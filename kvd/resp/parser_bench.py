"""
Measure what the client port's request parser costs per command, in process:
the Python code alone (``PyRespParser``: the parser before hiredis, and the
fallback without it) against the parser a node runs (``RespParser``: hiredis
for complete requests), on the requests redis-benchmark sends.

    python -m kvd.resp.parser_bench [--rounds 3] [--commands 100000]

Loads: a SET of a 100-byte value to a key like redis-benchmark's
(``key:000000012345``) per read, as unpipelined clients send them; 16 such
SETs per read (``redis-benchmark -P 16``); a GET per read.  Each round feeds
every load to a new parser of each kind, the two kinds alternating, and
prints the CPU time per command: other work on the machine moves CPU time
much less than the wall clock.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, List, Tuple

from kvd.resp.parser import PyRespParser, RespParser

VALUE = b"x" * 100


def _request(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def _key(i: int) -> bytes:
    return b"key:%012d" % (i % 100_000)


def loads(commands: int) -> List[Tuple[str, List[bytes], int]]:
    """(name, the reads, commands per read) of each load, ``commands`` commands in all."""
    sets = [_request(b"SET", _key(i), VALUE) for i in range(commands)]
    gets = [_request(b"GET", _key(i)) for i in range(commands)]
    pipelined = [b"".join(sets[i:i + 16]) for i in range(0, commands, 16)]
    return [("SET, 1 per read", sets, 1), ("SET, 16 per read", pipelined, 16), ("GET, 1 per read", gets, 1)]


def cpu_us_per_command(parser_class: Callable[[], RespParser], reads: List[bytes], per_read: int) -> float:
    parser = parser_class()
    feed = parser.feed
    started = time.process_time()
    parsed = 0
    for data in reads:
        parsed += len(feed(data))
    seconds = time.process_time() - started
    if parsed != len(reads) * per_read:
        raise AssertionError("%s parsed %d commands of %d" % (parser_class.__name__, parsed, len(reads) * per_read))
    return seconds / parsed * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--commands", type=int, default=100_000, help="commands per load and round (a multiple of 16)")
    args = p.parse_args()
    if not RespParser.use_hiredis:
        p.error("hiredis cannot be imported: both parsers are the Python code")
    table = loads(args.commands - args.commands % 16)
    print("CPU us per command, Python parser -> hiredis parser")
    for round_ in range(1, args.rounds + 1):
        for name, reads, per_read in table:
            before = cpu_us_per_command(PyRespParser, reads, per_read)
            after = cpu_us_per_command(RespParser, reads, per_read)
            print("round %d  %-18s %6.2f -> %5.2f  (%.1fx)" % (round_, name, before, after, before / after))


if __name__ == "__main__":
    main()
