#!/usr/bin/env python3
"""The golden sealed object of crypt/src/lib.rs, computed independently
(Python's `cryptography` for HKDF and ChaCha20-Poly1305, `hmac` for the
nonce, HChaCha20 written out from RFC draft-irtf-cfrg-xchacha §2.2), so
that the Rust code is checked against the construction as documented,
not against itself.

    python3 crypt/tests/golden.py      # prints the id and the object, hex
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(secret, info, n):
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=b"backmesh data key v1", info=info).derive(secret)


def rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)


def hchacha20(key, nonce16):
    s = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        quarter(s, 0, 4, 8, 12); quarter(s, 1, 5, 9, 13); quarter(s, 2, 6, 10, 14); quarter(s, 3, 7, 11, 15)
        quarter(s, 0, 5, 10, 15); quarter(s, 1, 6, 11, 12); quarter(s, 2, 7, 8, 13); quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xchacha20poly1305_encrypt(key, nonce24, pt, aad):
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\0\0\0\0" + nonce24[16:], pt, aad)


def seal(secret, kind, context, pt):
    k_aead, k_nonce, kid = hkdf(secret, b"object aead", 32), hkdf(secret, b"object nonce", 32), hkdf(secret, b"key id", 8)
    aad = b"BMO1" + bytes([kind]) + kid + context
    nonce = hmac.new(k_nonce, struct.pack("<Q", len(aad)) + aad + pt, hashlib.sha256).digest()[:24]
    return kid, aad[:13] + nonce + xchacha20poly1305_encrypt(k_aead, nonce, pt, aad)


if __name__ == "__main__":
    # RFC draft-irtf-cfrg-xchacha §2.2.1's HChaCha20 test vector first.
    k = bytes(range(32))
    n = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(k, n).hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    kid, obj = seal(bytes([0x42]) * 32, 1, b"ctx", b"backmesh")
    print(kid.hex())
    print(obj.hex())
