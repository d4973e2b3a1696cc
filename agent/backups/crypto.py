"""Encryption of stored artefacts, applied after compression; keys come from files only.

Two schemes, chosen by the playbook's ``encryption:``:

``age``
    The age format (age-encryption.org/v1) through pyrage: X25519 or SSH recipients from
    ``age_recipients_file``; decryption needs ``age_identity_file``, which only verify and
    restore read, so a host can write backups it cannot read back.

``aes-256-gcm``
    A 32-byte key from ``key_file`` (raw, 64 hex digits or base64) and this streaming format,
    a STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) over AES-256-GCM::

        header, 27 bytes
          0   8  magic  b"OPSAGCM1"
          8   4  chunk size: plaintext bytes per full chunk, big-endian (4 KiB … 16 MiB)
         12   8  key id: SHA-256(b"opsagent-aes-key-id\\0" + key)[:8], so a wrong key is
                 named as such instead of as a corrupted file
         20   7  nonce prefix, random per file
        chunks, one after the other
          AES-256-GCM(key, nonce, plaintext, aad=header) = ciphertext || 16-byte tag
          nonce = prefix (7) || chunk index (4, big-endian) || 0x01 on the last chunk, else 0x00

    Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last holds
    fewer, possibly none (a plaintext whose length is a multiple of the chunk size ends with an
    empty chunk). A changed byte fails that chunk's tag; reordered or dropped chunks fail the
    index in the nonce; a cut-off stream lacks a last chunk; bytes appended spoil the last
    chunk's tag.
    The header is authenticated as every chunk's associated data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from typing import Any

from agent.backups import IntegrityError, KeyMaterialError, Readable, Writable
from agent.playbook.models.backups import Encryption

AGE, AES = "age", "aes-256-gcm"
SUFFIX = {AGE: ".age", AES: ".aes", None: ""}
MAGIC = b"OPSAGCM1"
HEADER_LEN = 27
TAG_LEN = 16
CHUNK = 1 << 20
_KEY_ID_LABEL = b"opsagent-aes-key-id\0"
COPY_CHUNK = 1 << 20


def scheme_of(enc: Encryption | None) -> str | None:
    """The scheme a spec's ``encryption:`` writes with: "age", "aes-256-gcm" or None."""
    if enc is None:
        return None
    return AGE if enc.age_recipients_file else AES


def encrypt_stream(reader: Readable, writer: Writable, enc: Encryption | None) -> None:
    """Copy reader to writer, encrypted as ``enc`` says (a plain copy without it)."""
    scheme = scheme_of(enc)
    if scheme is None:
        copy_stream(reader, writer)
    elif scheme == AES:
        assert enc is not None and enc.key_file is not None
        aes_encrypt(reader, writer, read_aes_key(enc.key_file))
    else:
        assert enc is not None and enc.age_recipients_file is not None
        recipients = read_age_recipients(enc.age_recipients_file)
        _age_call("encrypt_io", reader, writer, recipients)


def decrypt_stream(reader: Readable, writer: Writable, scheme: str | None,
                   enc: Encryption | None) -> None:
    """Copy reader to writer, decrypting a stream written with ``scheme``.

    Raises KeyMaterialError when the spec has no (or the wrong) key for it and
    IntegrityError when the ciphertext does not authenticate.
    """
    if scheme is None:
        copy_stream(reader, writer)
        return
    problem = missing_key(scheme, enc)
    if problem:
        raise KeyMaterialError(problem)
    assert enc is not None
    if scheme == AES:
        assert enc.key_file is not None
        aes_decrypt(reader, writer, read_aes_key(enc.key_file))
    elif scheme == AGE:
        assert enc.age_identity_file is not None
        _age_call("decrypt_io", reader, writer, read_age_identities(enc.age_identity_file))
    else:
        raise KeyMaterialError(f"unknown encryption {scheme!r} in the manifest")


def missing_key(scheme: str | None, enc: Encryption | None) -> str | None:
    """Why the spec cannot decrypt a stream written with ``scheme`` (None: it can)."""
    if scheme is None:
        return None
    if scheme == AES and (enc is None or enc.key_file is None):
        return "the backup is AES-256-GCM encrypted: give encryption.key_file"
    if scheme == AGE and (enc is None or enc.age_identity_file is None):
        return "the backup is age-encrypted: give encryption.age_identity_file to read it"
    return None


def copy_stream(reader: Readable, writer: Writable) -> None:
    while chunk := reader.read(COPY_CHUNK):
        writer.write(chunk)


# --- AES-256-GCM -----------------------------------------------------------------------------

def read_aes_key(path: str) -> bytes:
    """The 32-byte key in ``path``: raw bytes, 64 hex digits, or base64 (whitespace ignored)."""
    data = _read_key_file(path, "key_file")
    if len(data) == 32:
        return data
    text = data.strip()
    try:
        if len(text) == 64:
            return binascii.unhexlify(text)
        key = base64.b64decode(text, validate=True)
        if len(key) == 32:
            return key
    except (binascii.Error, ValueError):
        pass
    raise KeyMaterialError(f"key_file {path}: not a 32-byte key (32 raw bytes, 64 hex digits "
                           "or base64 of 32 bytes; e.g. head -c 32 /dev/urandom > FILE)")


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[:8]


def aes_encrypt(reader: Readable, writer: Writable, key: bytes, chunk: int = CHUNK) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key)
    header = MAGIC + struct.pack(">I", chunk) + key_id(key) + os.urandom(7)
    writer.write(header)
    index = 0
    while True:
        plain = read_full(reader, chunk)
        last = len(plain) < chunk
        writer.write(aead.encrypt(_nonce(header, index, last), plain, header))
        if last:
            return
        index += 1


def aes_decrypt(reader: Readable, writer: Writable, key: bytes) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = read_full(reader, HEADER_LEN)
    if len(header) < HEADER_LEN or header[:8] != MAGIC:
        raise IntegrityError("not an opsagent AES-256-GCM stream (bad header)")
    (chunk,) = struct.unpack(">I", header[8:12])
    if not 4096 <= chunk <= 16 << 20:
        raise IntegrityError(f"bad chunk size {chunk} in the AES-256-GCM header")
    if header[12:20] != key_id(key):
        raise KeyMaterialError("key_file holds a different key than the one this backup was "
                               "encrypted with (wrong key)")
    aead = AESGCM(key)
    index = 0
    while True:
        sealed = read_full(reader, chunk + TAG_LEN)
        if len(sealed) < TAG_LEN:
            raise IntegrityError(f"AES-256-GCM stream cut off before its last chunk "
                                 f"(chunk {index})")
        last = len(sealed) < chunk + TAG_LEN
        try:
            writer.write(aead.decrypt(_nonce(header, index, last), sealed, header))
        except InvalidTag:
            raise IntegrityError(f"AES-256-GCM chunk {index} fails authentication: the file "
                                 "was changed or cut") from None
        if last:  # read_full stopped short: the stream ended here
            return
        index += 1


def _nonce(header: bytes, index: int, last: bool) -> bytes:
    if index >= 1 << 32:
        raise IntegrityError("AES-256-GCM stream too long (2^32 chunks)")
    return header[20:27] + struct.pack(">IB", index, 1 if last else 0)


def read_full(reader: Readable, n: int) -> bytes:
    """Exactly n bytes, or fewer only at the end of the stream (pipes return short reads)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = reader.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts) if len(parts) != 1 else parts[0]


# --- age ---------------------------------------------------------------------------------------

def read_age_recipients(path: str) -> list[Any]:
    from pyrage import ssh, x25519  # type: ignore[import-untyped]

    text = _read_key_file(path, "age_recipients_file").decode("utf-8", "replace")
    out: list[Any] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("age1"):
                out.append(x25519.Recipient.from_str(line))
            elif line.startswith(("ssh-ed25519 ", "ssh-rsa ")):
                out.append(ssh.Recipient.from_str(line))
            else:
                raise ValueError("not an age1… or ssh-ed25519/ssh-rsa recipient")
        except Exception as e:  # pyrage raises its own RecipientError
            raise KeyMaterialError(f"age_recipients_file {path}:{n}: {e}") from None
    if not out:
        raise KeyMaterialError(f"age_recipients_file {path} names no recipient")
    return out


def read_age_identities(path: str) -> list[Any]:
    from pyrage import ssh, x25519

    data = _read_key_file(path, "age_identity_file")
    try:
        if b"-----BEGIN" in data:
            return [ssh.Identity.from_buffer(data)]
        keys = [line.strip() for line in data.decode("ascii").splitlines()
                if line.strip().startswith("AGE-SECRET-KEY-")]
        if keys:
            return [x25519.Identity.from_str(k) for k in keys]
    except Exception:  # the message could quote key material: say only where
        raise KeyMaterialError(f"age_identity_file {path}: not a valid age or SSH identity"
                               ) from None
    raise KeyMaterialError(f"age_identity_file {path} holds no AGE-SECRET-KEY-1… line")


class _Guarded:
    """A reader or writer handed to pyrage that keeps the exception our own side raised.

    pyrage turns a Python exception inside read()/write() into a plain OSError; the one we
    re-raise must be the original (a failing dump, a broken pg_restore pipe)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self.inner.read(size)
            return data
        except BaseException as e:
            self.error = e
            raise

    def write(self, data: bytes) -> int:
        try:
            self.inner.write(data)
            return len(data)
        except BaseException as e:
            self.error = e
            raise

    def flush(self) -> None:
        flush = getattr(self.inner, "flush", None)
        if flush is not None:
            flush()


def _age_call(fn: str, reader: Readable, writer: Writable, keys: list[Any]) -> None:
    import pyrage

    r, w = _Guarded(reader), _Guarded(writer)
    try:
        getattr(pyrage, fn)(r, w, keys)
        w.flush()
    except (pyrage.DecryptError, pyrage.EncryptError, OSError) as e:
        if r.error is not None:
            raise r.error from None
        if w.error is not None:
            raise w.error from None
        text = str(e)
        if "No matching keys" in text:
            raise KeyMaterialError("age_identity_file holds no identity this backup was "
                                   "encrypted to (wrong key)") from None
        if isinstance(e, pyrage.EncryptError):
            raise KeyMaterialError(f"age encryption failed: {text}") from None
        raise IntegrityError(f"age stream fails authentication or is malformed ({text}): the "
                             "file was changed or cut") from None


def _read_key_file(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise KeyMaterialError(f"{field} {path}: {e.strerror}") from None
