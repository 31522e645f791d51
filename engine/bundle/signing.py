"""Bundle signatures: Ed25519 over ``manifest.json``, by a key that never enters the bundle.

Why: the manifest's sha256 list proves that the files match the manifest, not who wrote the
manifest. Anyone who can write the folder can recompute the hashes, so a code-running
detector file or a rules rewrite that drops an approval verified as well as the real thing. A
signature over the manifest's exact bytes covers everything the manifest says (model name and
version, detector threshold and parameters, library versions, the policies summary, the sha256 and
size of every file), and only the holder of the private key can make one. The engine accepts a
bundle only when the signature verifies under a key it was told to trust, and checks this before
anything in the bundle is deserialised.

Files (formats are standard, so other tools can read them):

- private key: PEM, PKCS#8, written mode 0600 by ``selfheal bundle keygen`` (default
  ``HOME/keys/bundle-signing.key``); it belongs in a CI secret store, never in a bundle or a repo;
- public key: one OpenSSH line (``ssh-ed25519 AAAA... selfheal-bundle KEYID``) in ``KEY.pub``;
  PEM public keys are read too;
- signature: ``DIR/manifest.sig``, JSON ``{format, algorithm, key_id, signature}``; the signed
  message is ``SIGNED_PREFIX`` followed by the bytes of ``manifest.json``, so a signature made for
  a bundle cannot be replayed as a signature of anything else;
- trust: public-key files, or folders of ``*.pub``, from (in this order) ``--trusted-key``, the
  engine config's ``trusted_keys``, ``SELFHEAL_TRUSTED_KEYS`` (paths separated by ``:``) and
  ``HOME/keys/trusted/``.

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.bundle.manifest import SIGNATURE_NAME
from engine.errors import BundleError, ConfigError
from engine.home import Home

logger = logging.getLogger(__name__)

SIGNATURE_FORMAT = "selfheal-signature"
SIGNED_PREFIX = b"selfheal-bundle-manifest-v1\n"
TRUST_ENV = "SELFHEAL_TRUSTED_KEYS"
KEY_FILE = "bundle-signing.key"
TRUST_SOURCES = f"--trusted-key, the trusted_keys setting, {TRUST_ENV} or HOME/keys/trusted/"

Status = Literal["trusted", "untrusted", "unsigned", "invalid"]


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_line(public: Ed25519PublicKey) -> str:
    """The one-line OpenSSH form written to ``KEY.pub`` (what teams pin)."""
    ssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{ssh.decode()} selfheal-bundle {key_id(public)}\n"


# -------------------------------------------------------------------------------------- keys


def generate_key(path: Path, *, force: bool = False) -> tuple[Path, str]:
    """Write a new private key to ``path`` (mode 0600) and its public line to ``path.pub``.

    Returns the public key file and the key id. An existing key is never replaced without ``force``:
    bundles signed with it would stop verifying wherever its public key is pinned.
    """
    path = Path(path)
    pub = public_path(path)
    if not force and (path.exists() or pub.exists()):
        raise ConfigError(
            f"{path} already exists",
            hint="bundles signed with it verify only with its public key: pass --force only to rotate it",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, path)
    pub.write_text(public_line(private.public_key()))
    return pub, key_id(private.public_key())


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"signing key {path}: cannot read ({exc.strerror or exc})",
            hint="create one with `selfheal bundle keygen --key PATH`",
        ) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"signing key {path}: not an unencrypted PEM private key",
            hint="use a key written by `selfheal bundle keygen`",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path}: not an Ed25519 key", hint="run `selfheal bundle keygen`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from an OpenSSH line or a PEM file (ConfigError naming the file)."""
    try:
        data = path.read_bytes()[:16384]
    except OSError as exc:
        raise ConfigError(f"trusted key {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(b" ".join(data.split()[:2]))
    except (ValueError, TypeError, IndexError, binascii.Error) as exc:
        raise ConfigError(
            f"trusted key {path}: not a public key",
            hint="give the KEY.pub file `selfheal bundle keygen` wrote (one ssh-ed25519 line)",
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted key {path}: not an Ed25519 key", hint="bundles are signed with Ed25519")
    return key


# ------------------------------------------------------------------------------------- trust


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public: Ed25519PublicKey
    source: str


@dataclass(frozen=True)
class Trust:
    """The public keys whose signatures a bundle may carry, and whether unsigned bundles may load."""

    keys: tuple[TrustedKey, ...] = ()
    allow_unsigned: bool = False

    @classmethod
    def load(
        cls,
        paths: Iterable[Path | str] = (),
        *,
        optional: Iterable[Path | str] = (),
        allow_unsigned: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Trust:
        """Keys from ``paths`` (files or folders of ``*.pub``; each must exist), then from
        ``SELFHEAL_TRUSTED_KEYS``, then from ``optional`` folders (absent ones are skipped)."""
        env = os.environ if environ is None else environ
        named = [Path(p) for p in paths]
        named += [Path(p) for p in env.get(TRUST_ENV, "").split(os.pathsep) if p.strip()]
        found: dict[str, TrustedKey] = {}
        for path in [*named, *(Path(p) for p in optional if Path(p).is_dir())]:
            if path.is_dir():
                files = sorted(path.glob("*.pub"))
            elif path.is_file():
                files = [path]
            else:
                raise ConfigError(
                    f"trusted key {path}: no such file or folder",
                    hint=f"give a KEY.pub file or a folder of them ({TRUST_SOURCES})",
                )
            for file in files:
                public = load_public_key(file)
                found.setdefault(key_id(public), TrustedKey(key_id(public), public, str(file)))
        return cls(tuple(found.values()), allow_unsigned)

    @classmethod
    def for_home(cls, home: Home, paths: Iterable[Path | str] = (), *, allow_unsigned: bool = False) -> Trust:
        """``load`` with the home's trust folder (``HOME/keys/trusted``) as the last source."""
        return cls.load(paths, optional=[home.trusted_keys], allow_unsigned=allow_unsigned)

    def describe(self) -> str:
        if not self.keys:
            return "no trusted keys"
        return ", ".join(f"{k.key_id} ({k.source})" for k in self.keys)


def trust_key(public_file: Path, home: Home) -> Path:
    """Pin a public key in the home's trust folder (what the demo does with its own key)."""
    public = load_public_key(public_file)
    dest = home.trusted_keys / f"{key_id(public)}.pub"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(public_line(public))
    return dest


# ------------------------------------------------------------------------------ sign, check


def sign_manifest(folder: Path, private: Ed25519PrivateKey, manifest: bytes) -> str:
    """Write ``folder/manifest.sig`` for ``manifest`` (the bytes of manifest.json); returns the key id."""
    kid = key_id(private.public_key())
    doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key_id": kid,
        "signature": base64.b64encode(private.sign(SIGNED_PREFIX + manifest)).decode(),
    }
    tmp = folder / f".{SIGNATURE_NAME}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, folder / SIGNATURE_NAME)
    return kid


@dataclass(frozen=True)
class SignatureCheck:
    """What ``check_signature`` found: ``status`` and, when signed, by which key id."""

    status: Status
    key_id: str | None
    detail: str

    @property
    def trusted(self) -> bool:
        return self.status == "trusted"


def check_signature(folder: Path, manifest: bytes, trust: Trust) -> SignatureCheck:
    """Does ``folder/manifest.sig`` sign exactly ``manifest`` under a trusted key? Reads no other file."""
    path = folder / SIGNATURE_NAME
    if path.is_symlink() or not path.is_file():
        return SignatureCheck("unsigned", None, f"{SIGNATURE_NAME}: the bundle is not signed")
    try:
        doc = json.loads(path.read_bytes()[:4096])
        kid, signature = str(doc["key_id"]), base64.b64decode(doc["signature"], validate=True)
        if doc.get("format") != SIGNATURE_FORMAT or doc.get("algorithm") != "ed25519":
            raise ValueError("not a selfheal ed25519 signature")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return SignatureCheck("invalid", None, f"{SIGNATURE_NAME}: unreadable ({exc})")
    key = next((k for k in trust.keys if k.key_id == kid), None)
    if key is None:
        return SignatureCheck(
            "untrusted", kid, f"{SIGNATURE_NAME}: signed by key {kid[:16]!r}, which is not trusted here"
        )
    try:
        key.public.verify(signature, SIGNED_PREFIX + manifest)
    except InvalidSignature:
        return SignatureCheck(
            "invalid",
            kid,
            f"{SIGNATURE_NAME}: the signature of key {kid} does not match manifest.json "
            "(the manifest was changed after signing)",
        )
    return SignatureCheck("trusted", kid, f"signed by trusted key {kid} ({key.source})")


def refusal_hint(check: SignatureCheck) -> str:
    """What to do about a signature that is not trusted."""
    if check.status == "unsigned":
        return "sign it (selfheal bundle sign DIR --key KEY); --allow-unsigned is for local development only"
    if check.status == "untrusted":
        return f"pin the signer's KEY.pub ({TRUST_SOURCES})"
    return "rebuild and sign the bundle; never edit a signed bundle"


def require(check: SignatureCheck, trust: Trust, where: Path) -> None:
    """Raise BundleError unless ``check`` is trusted, or warn loudly when ``trust.allow_unsigned``."""
    if check.trusted:
        return
    if not trust.allow_unsigned:
        raise BundleError(f"{where}: {check.detail}; refusing to load it", hint=refusal_hint(check))
    logger.warning(
        "UNTRUSTED BUNDLE LOADED: %s: %s. --allow-unsigned is for local development only: this bundle's "
        "detector code and policies run with no proof of who made them",
        where,
        check.detail,
    )


def local_signing_key(home: Home, echo: Callable[[str], None] = logger.info) -> Path:
    """The home's own signing key, made and pinned in HOME/keys/trusted/ on first use.

    The demo and the closed-loop assessment sign their bundles like production does, so the
    engine's default (refuse unsigned bundles) holds there too; a team signs in CI with a key of
    its own and pins that instead.
    """
    key = home.keys / KEY_FILE
    if not key.is_file():
        _, kid = generate_key(key)
        echo(f"       new local signing key {kid} at {key} (pinned in {home.trusted_keys})")
    trust_key(public_path(key), home)
    return key
