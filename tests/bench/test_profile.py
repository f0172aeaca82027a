"""kvd.bench.profile: py-spy's raw stacks sorted into rooms by the innermost frame that names one."""

from kvd.bench.profile import OTHER, RATE_HZ, REACTOR, WRITER, Profile, room_of, table

RAW = "\n".join([
    # reactor thread: a socket send under Twisted's write path
    "<module> (<string>:1);ReactorBase.run (twisted/internet/base.py:686);"
    "Connection.writeSomeData (twisted/internet/tcp.py:306);untilConcludes (twisted/python/util.py:760) 7",
    # reactor thread: a dataclass built by the Raft core counts as the core's
    "<module> (<string>:1);Replica._drain (kvd/replica.py:304);RaftCore.step (kvd/raft/core.py:100);"
    "__init__ (<string>:3) 5",
    # reactor thread: Twisted's callLater called by the node counts as the reactor's
    "<module> (<string>:1);NodeService._drain (kvd/node/service.py:413);"
    "ReactorBase.callLater (twisted/internet/base.py:953) 3",
    # writer thread: the LMDB commit
    "Thread._bootstrap (threading.py:1002);WriterThread._run (kvd/store/writer.py:65);"
    "LmdbStorage._transact (kvd/store/lmdb.py:528) 4",
    # nothing that names a room
    "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982) 1",
    "a line that is not a stack",
])


def test_every_sample_goes_to_the_innermost_room_and_its_thread():
    p = Profile()
    p.add_raw(RAW)
    assert p.samples == {
        (REACTOR, "socket send/recv (kernel)"): 7,
        (REACTOR, "Raft core (kvd.raft)"): 5,
        (REACTOR, "reactor, Deferreds, timers (twisted)"): 3,
        (WRITER, "storage: LMDB + fsync"): 4,
        (REACTOR, OTHER): 1,
    }
    assert p.seconds(REACTOR) == 16 / RATE_HZ and p.seconds(WRITER, "storage: LMDB + fsync") == 4 / RATE_HZ


def test_absolute_paths_match_as_relative_ones():
    assert room_of(["f (/work/main/kvd/resp/protocol.py:10)"]) == "RESP (kvd.resp)"
    assert room_of(["f (kvd/resp/protocol.py:10)"]) == "RESP (kvd.resp)"
    assert room_of(["f (/usr/lib/python3/dist-packages/OpenSSL/SSL.py:2356)"]) == "TLS (pyOpenSSL)"


def test_the_table_gives_microseconds_per_request():
    p = Profile()
    p.add_raw(RAW)
    lines = table({"n1": p}, requests=10, wall_s=1.0, names=["n1", "n2"])
    assert lines[0].startswith("    n1: reactor thread busy 8% of a core (8000 us/request), writer thread 2% (2000 us)")
    socket_line = next(line for line in lines if "socket send/recv" in line)
    assert socket_line.split()[-3:] == ["3500", "us", "35.0%"]
    assert lines[-1] == "    n2: no samples"
