"""python -m gateway.keys: print a fresh set of keys for the control plane and the workers."""

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from .config import encode_raw_key, public_key_text


def fresh_keys() -> dict[str, str]:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {
        "GATEHOUSE_SIGNING_KEY": encode_raw_key(seed),
        "GATEHOUSE_SIGNING_PUBLIC_KEY": public_key_text(private),
        "GATEHOUSE_GATEWAY_KEY": encode_raw_key(os.urandom(32)),
    }


if __name__ == "__main__":
    for name, value in fresh_keys().items():
        print(f"{name}={value}")
