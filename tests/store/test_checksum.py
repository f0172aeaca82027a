import pytest

from kvd.store.checksum import crc, seal, unseal
from kvd.store.schema import CorruptRecord


def test_crc32c_check_value():
    # The standard check value of CRC-32C (Castagnoli) for "123456789".
    assert crc(b"123456789") == 0xE3069283


def test_seal_round_trip():
    for payload in (b"", b"x", bytes(range(256)) * 10):
        assert unseal(seal(payload), "test") == payload


@pytest.mark.parametrize("position", [0, 3, -1, -5])
def test_a_flipped_byte_is_caught(position):
    record = bytearray(seal(b"hello, world"))
    record[position] ^= 0x20
    with pytest.raises(CorruptRecord, match="checksum mismatch"):
        unseal(bytes(record), "value of key b'k'")


def test_a_record_shorter_than_its_checksum():
    with pytest.raises(CorruptRecord, match="shorter than its checksum"):
        unseal(b"ab", "log entry 7")
