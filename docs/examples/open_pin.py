"""Open a PIN sealed by orderflow (the `pin` of a completed orders.state event, or the
`pin_encrypted` column of the orders table, as UTF-8 text).

    v1.<key_id>.<base64url without padding of: 12-byte nonce || ciphertext || 16-byte tag>

AES-256-GCM; the associated data is b"orderflow.pin.v1" followed by the order id's 16
bytes, so a sealed PIN only opens for its own order. Keys are `key_id:base64` lines
(ORDERFLOW_PIN_KEYS); keep every key that may still have sealed a PIN you need to read.

    python3 open_pin.py <order_id> <sealed> < keys     # needs the `cryptography` package
"""

import base64
import sys
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def load_keys(text):
    keys = {}
    for entry in text.replace(",", "\n").splitlines():
        entry = entry.strip()
        if entry and not entry.startswith("#"):
            key_id, key = entry.split(":", 1)
            keys[key_id.strip()] = base64.b64decode(key.strip())
    return keys


def open_pin(keys, order_id, sealed):
    version, key_id, payload = sealed.split(".", 2)
    if version != "v1":
        raise ValueError(f"unknown sealing version {version!r}")
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    nonce, ciphertext = data[:12], data[12:]
    aad = b"orderflow.pin.v1" + uuid.UUID(order_id).bytes
    return AESGCM(keys[key_id]).decrypt(nonce, ciphertext, aad).decode("utf-8")


if __name__ == "__main__":
    print(open_pin(load_keys(sys.stdin.read()), sys.argv[1], sys.argv[2]))
