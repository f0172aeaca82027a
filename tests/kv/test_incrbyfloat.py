"""
INCRBYFLOAT in the log and the machine: the codec (also inside a transaction,
beside the read ops), Redis 7's x87 long double arithmetic and text (the
expected replies were taken from redis-server 7.0.15), its errors in Redis's
order, and the same answers from memory and from disk.
"""

import pytest

from kvd.kv.commands import (
    CodecError, Envelope, FlushAll, Get, IncrByFloat, RandomKey, Set, Transaction, command_keys, command_size,
    decode_envelope, encode_envelope, write_keys,
)
from kvd.kv.codec import Writer
from kvd.kv.machine import ERR_FLOAT_NAN_INF, ERR_NOT_FLOAT
from tests.kv.test_everyday import kv  # noqa: F401 (the fixture: memory, lmdb, lmdb-unflushed)


def test_round_trip_alone_and_inside_a_transaction():
    for cmd in (IncrByFloat(b"k", b"1.5"), IncrByFloat(b"", b""), IncrByFloat(b"\x00\r\n", b"not a float")):
        env = Envelope(b"c", 1, 1, 5, cmd)
        assert decode_envelope(encode_envelope(env)) == env
        base = len(encode_envelope(Envelope(b"c", 1, 1, 5, Set(b"", b""))))
        assert len(encode_envelope(env)) - base + command_size(Set(b"", b"")) == command_size(cmd)
        assert command_keys(cmd) == 1 and write_keys(cmd) == (cmd.key,)
    txn = Envelope(b"c", 1, 1, 5, Transaction((Get(b"k"), IncrByFloat(b"k", b"2"), RandomKey(7), Get(b"k"))))
    assert decode_envelope(encode_envelope(txn)) == txn


def test_tags_of_reads_and_incrbyfloat_do_not_collide():
    """Inside a transaction tags 32-63 are read ops (40 is RANDOMKEY): INCRBYFLOAT's 64 is a write."""
    header = len(encode_envelope(Envelope(b"c", 1, 1, 5, FlushAll()))) - 1
    assert encode_envelope(Envelope(b"c", 1, 1, 5, IncrByFloat(b"k", b"1")))[header] == 64
    w = Writer()
    w.byte(1)
    w.blob(b"c")
    w.uint(1)
    w.uint(1)
    w.uint(0)
    w.byte(12)  # a transaction
    w.uint(0)
    w.uint(1)
    w.byte(63)  # no such read op
    with pytest.raises(CodecError, match="read op tag 63"):
        decode_envelope(w.getvalue())


def test_invalid_commands_cannot_be_built():
    with pytest.raises(TypeError):
        IncrByFloat("k", b"1")
    with pytest.raises(TypeError):
        IncrByFloat(b"k", 1.5)


# (stored value or None, increment, reply) as redis-server 7.0.15 answered.
REDIS_7_0 = [
    (b"10.5", b"0.1", b"10.6"),
    (b"5", b"-5", b"0"),
    (b"3", b"1.1", b"4.1"),
    (None, b"3.0e3", b"3000"),
    (None, b"0x1p-3", b"0.125"),
    (None, b".5", b"0.5"),
    (None, b"5.", b"5"),
    (b"1e3", b"-0.001", b"999.999"),
    (b"9007199254740993", b"1", b"9007199254740994"),
    (b"0.1", b"0.2", b"0.3"),
    (None, b"+1E-2", b"0.01"),
    (b"17179869184", b"0.0000001", b"17179869184.00000010058283806"),
    (None, b"-.0", b"0"),
    (None, b"5.0e-20", b"0"),
    (None, b"1.23456789012345678901234", b"1.23456789012345679"),
    (None, b"1e300", b"1000000000000000000008997324079559193870523944273290747938260082321265646596180935755849152"
                     b"083750497" + b"", None),
]


@pytest.mark.parametrize("stored,increment,reply", [r[:3] for r in REDIS_7_0[:-1]])
def test_replies_as_redis(kv, stored, increment, reply):  # noqa: F811
    if stored is not None:
        kv(Set(b"k", stored))
    assert kv(IncrByFloat(b"k", increment)) == reply
    assert kv.read(Get(b"k")) == reply


def test_a_huge_sum_is_printed_whole(kv):  # noqa: F811
    """%.17Lf: 1e300 as a long double, every integer digit (Redis's buffer holds up to 5 KiB)."""
    result = kv(IncrByFloat(b"k", b"1e300"))
    assert result.startswith(REDIS_7_0[-1][2]) and len(result) == 301 and b"." not in result


@pytest.mark.parametrize("stored,increment,error", [
    (b"abc", b"1", ERR_NOT_FLOAT),
    (b"abc", b"inf", ERR_NOT_FLOAT),  # the stored value is checked first
    (None, b"x", ERR_NOT_FLOAT),
    (None, b" 1", ERR_NOT_FLOAT),
    (None, b"1 ", ERR_NOT_FLOAT),
    (None, b"nan", ERR_NOT_FLOAT),
    (None, b"1e5000", ERR_NOT_FLOAT),  # strtold's ERANGE
    (None, b"1e-5000", ERR_NOT_FLOAT),
    (None, b"", ERR_NOT_FLOAT),
    (None, b"1\x002", ERR_NOT_FLOAT),
    (b"inf", b"x", ERR_NOT_FLOAT),
    (None, b"inf", ERR_FLOAT_NAN_INF),
    (None, b"-Infinity", ERR_FLOAT_NAN_INF),
    (b"inf", b"1", ERR_FLOAT_NAN_INF),
    (b"1.18973149535723176502e+4932", b"1.18973149535723176502e+4932", ERR_FLOAT_NAN_INF),
])
def test_errors_as_redis_and_nothing_written(kv, stored, increment, error):  # noqa: F811
    if stored is not None:
        kv(Set(b"k", stored))
    assert kv(IncrByFloat(b"k", increment)) == error
    assert kv.read(Get(b"k")) == stored


def test_inside_a_transaction(kv):  # noqa: F811
    results = kv(Transaction((IncrByFloat(b"k", b"1.5"), IncrByFloat(b"k", b"x"), IncrByFloat(b"k", b"1"),
                              Get(b"k"))))
    assert results == [b"1.5", ERR_NOT_FLOAT, b"2.5", b"2.5"]


def test_a_key_of_another_type_answers_wrongtype():
    """A keyspace that holds something other than a string at the key (a hash, branch hashes): WRONGTYPE, unchanged."""
    from kvd.kv.machine import ERR_WRONGTYPE, _incrbyfloat

    class Keyspace:
        def __init__(self):
            self.values = {b"h": object()}

        def get(self, key):
            return self.values.get(key)

        def put(self, key, value):
            raise AssertionError("nothing may be written")

    assert _incrbyfloat(Keyspace(), IncrByFloat(b"h", b"1")) is ERR_WRONGTYPE
    assert ERR_WRONGTYPE.message == "WRONGTYPE Operation against a key holding the wrong kind of value"
