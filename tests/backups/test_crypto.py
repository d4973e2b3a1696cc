"""Encrypted backups: the AES-256-GCM stream format and age, end to end on real runs."""

from __future__ import annotations

import io
import os
import sys
import uuid

import psycopg
import pytest
import zstandard
from pyrage import x25519

from agent.backups import IntegrityError, KeyMaterialError
from agent.backups.crypto import CHUNK, HEADER_LEN, TAG_LEN, aes_decrypt, aes_encrypt
from agent.backups.restore import restore
from agent.backups.run import list_backups, run_backup
from agent.backups.verify import verify_run
from agent.errors import UsageError
from tests.backups.specs import backup_spec, drop_database, fingerprint, seed

MARKER = b"PLAINTEXT-MARKER-"
KEY = bytes(range(32))


def encrypt(data, key=KEY, chunk=4096):
    out = io.BytesIO()
    aes_encrypt(io.BytesIO(data), out, key, chunk)
    return out.getvalue()


def decrypt(blob, key=KEY):
    out = io.BytesIO()
    aes_decrypt(io.BytesIO(blob), out, key)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 50_000])
def test_aes_stream_round_trips_every_length_around_chunk_edges(size):
    data = os.urandom(size)
    blob = encrypt(data)
    chunks = size // 4096 + 1  # a full last chunk is followed by an empty, final one
    assert len(blob) == HEADER_LEN + size + chunks * TAG_LEN
    assert decrypt(blob) == data


def test_aes_stream_refuses_changes_cuts_reordering_and_the_wrong_key():
    data = os.urandom(3 * 4096 + 100)
    blob = encrypt(data)
    body = HEADER_LEN
    sealed = 4096 + TAG_LEN
    flipped = bytearray(blob)
    flipped[body + sealed + 10] ^= 0x01  # a byte of chunk 1
    with pytest.raises(IntegrityError, match="chunk 1 fails authentication"):
        decrypt(bytes(flipped))
    with pytest.raises(IntegrityError, match="cut off"):  # cut right after a full chunk
        decrypt(blob[:body + 2 * sealed])
    with pytest.raises(IntegrityError):  # cut inside a chunk
        decrypt(blob[:-5])
    swapped = blob[:body] + blob[body + sealed:body + 2 * sealed] + blob[body:body + sealed] \
        + blob[body + 2 * sealed:]
    with pytest.raises(IntegrityError, match="chunk 0"):
        decrypt(swapped)
    for extra in (b"x", os.urandom(5000)):  # appended bytes spoil the last chunk
        with pytest.raises(IntegrityError, match="chunk 3"):
            decrypt(blob + extra)
    header = bytearray(blob)
    header[HEADER_LEN - 1] ^= 0x01  # the nonce prefix, authenticated as associated data
    with pytest.raises(IntegrityError):
        decrypt(bytes(header))
    with pytest.raises(KeyMaterialError, match="wrong key"):
        decrypt(blob, key=bytes(32))


def command_source(payload_size=300_000):
    code = (f"import sys, hashlib\nfor i in range({payload_size // 50}):\n"
            f"    sys.stdout.buffer.write(b'{MARKER.decode()}' + hashlib.md5(str(i).encode())"
            ".hexdigest().encode() + b'\\n')")
    return {"command": [sys.executable, "-c", code]}


def expected_output(payload_size=300_000):
    import hashlib
    return b"".join(MARKER + hashlib.md5(str(i).encode()).hexdigest().encode() + b"\n"
                    for i in range(payload_size // 50))


@pytest.fixture
def keys(tmp_path):
    ident = x25519.Identity.generate()
    other = x25519.Identity.generate()
    (tmp_path / "recipients").write_text(f"# backup key\n{ident.to_public()}\n")
    (tmp_path / "identity").write_text(f"# created: now\n{ident}\n")
    (tmp_path / "other-identity").write_text(f"{other}\n")
    (tmp_path / "aes.key").write_bytes(os.urandom(32))
    (tmp_path / "aes-hex.key").write_text(os.urandom(32).hex() + "\n")
    return tmp_path


def stored_file(run):
    return os.path.join(run.path, run.artefacts[0].file)


@pytest.mark.parametrize("scheme", ["age", "aes"])
def test_an_encrypted_backup_is_unreadable_without_its_key_and_restorable_with_it(
        keys, tmp_path, scheme):
    enc, wrong = {
        "age": ({"age_recipients_file": str(keys / "recipients"),
                 "age_identity_file": str(keys / "identity")},
                {"age_recipients_file": str(keys / "recipients"),
                 "age_identity_file": str(keys / "other-identity")}),
        "aes": ({"key_file": str(keys / "aes.key")}, {"key_file": str(keys / "aes-hex.key")}),
    }[scheme]
    dest = tmp_path / "dest"
    spec = backup_spec(dest, command_source(), encryption=enc, verify={})
    res = run_backup(spec)
    assert res.ok and res.verified, res.error
    run = list_backups(spec)[-1]
    art = run.artefacts[0]
    assert art.encryption == ("age" if scheme == "age" else "aes-256-gcm")
    assert art.file == "stdout.zst." + ("age" if scheme == "age" else "aes")
    with open(stored_file(run), "rb") as f:
        blob = f.read()
    assert MARKER not in blob
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompressobj().decompress(blob)

    # without the key: the spec has no encryption any more
    plain = backup_spec(dest, command_source())
    with pytest.raises(UsageError, match="key_file|age_identity_file"):
        restore(plain, to=str(tmp_path / "out0"), yes=True)
    # with a wrong key
    with pytest.raises(KeyMaterialError, match="wrong key"):
        restore(backup_spec(dest, command_source(), encryption=wrong),
                to=str(tmp_path / "out1"), yes=True)
    assert not (tmp_path / "out1").exists()
    bad = verify_run(backup_spec(dest, command_source(), encryption=wrong))
    assert not bad.ok and "wrong key" in bad.error

    restore(spec, to=str(tmp_path / "out"), yes=True)
    assert (tmp_path / "out").read_bytes() == expected_output()


def test_age_backups_without_the_identity_are_checked_by_checksum_only(keys, tmp_path):
    spec = backup_spec(tmp_path / "d", command_source(),
                       encryption={"age_recipients_file": str(keys / "recipients")}, verify={})
    res = run_backup(spec)
    assert res.ok and res.verified
    assert "content not read" in res.verify.checks[0].detail
    with pytest.raises(UsageError, match="age_identity_file"):
        restore(spec, to=str(tmp_path / "out"))


@pytest.mark.parametrize("scheme", ["age", "aes"])
def test_a_tampered_encrypted_artefact_is_named_by_verify(keys, tmp_path, scheme):
    enc = ({"age_recipients_file": str(keys / "recipients"),
            "age_identity_file": str(keys / "identity")} if scheme == "age"
           else {"key_file": str(keys / "aes.key")})
    spec = backup_spec(tmp_path / "d", command_source(), encryption=enc)
    assert run_backup(spec).ok
    run = list_backups(spec)[-1]
    path = stored_file(run)
    with open(path, "r+b") as f:
        f.seek(CHUNK // 2 if os.path.getsize(path) > CHUNK else 200)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    out = verify_run(spec)
    assert not out.ok and path in out.error and "sha256" in out.error
    with pytest.raises(IntegrityError, match="sha256"):
        restore(spec, to=str(tmp_path / "out"), yes=True)
    assert not (tmp_path / "out").exists()


def test_an_aes_encrypted_database_backup_restores(postgres, tmp_path, monkeypatch, keys):
    url = postgres.new_database()
    db, role = url.rsplit("/", 1)[1], "r" + uuid.uuid4().hex[:10]
    seed(url, role, rows=1000)
    before = fingerprint(url)
    monkeypatch.setenv("OPSAGENT_TEST_DSN", postgres.url())
    spec = backup_spec(tmp_path / "d", {"postgres": {"dsn_env": "OPSAGENT_TEST_DSN",
                                                     "databases": [db]}},
                       encryption={"key_file": str(keys / "aes.key")},
                       verify={"restore": True, "query": "SELECT count(*) FROM customers"})
    res = run_backup(spec)
    assert res.ok and res.verify.query_result == [[1000]], res.error
    assert all(a.encryption == "aes-256-gcm" for a in res.artefacts)
    drop_database(postgres.url(), db, role)
    restore(spec, yes=True)
    assert fingerprint(url) == before
    with psycopg.connect(url) as c:
        assert c.execute("SELECT count(*) FROM orders").fetchone() == (2000,)
