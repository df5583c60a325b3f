"""Where the retention root key comes from, and the checks made before it is trusted.

Sources, exactly one of them configured (``[retention]`` in the config file):

- ``root_key_file``: a file holding the 32-byte key as base64 (44 characters) or hex (64),
  written by ``broker retention generate-root-key``. It should be mode 0600 and live outside
  the data directory, ideally on a secrets mount (Kubernetes secret, systemd credential).
- ``root_key_env``: the *name* of an environment variable holding the key in the same form,
  for platforms that inject secrets that way.
- ``pkcs11``: a key that never leaves an HSM (:mod:`broker.retention.pkcs11`).

Decision on "never beside the data it protects": a root key file inside ``data_dir``, or in the
directory of the SQLite database, is refused (RootKeyError) unless
``unsafe_allow_root_key_in_data_dir = true``, which logs a warning on every start. A backup or
a stolen copy of the data directory would otherwise carry its own key, and crypto-shredding
would then only be as good as the row deletion. A file readable by group or others is accepted
with a warning, since container secret mounts are often 0644 inside a private namespace.

If nothing is configured, retention is off (``load_key_wrapper`` returns None) and
:func:`broker.retention.setup.open_retention` refuses to start when the database already holds
wrapped keys, because that means the root key went missing.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from broker.config import Config, RetentionConfig
from broker.logging import get_logger
from broker.retention import crypto
from broker.retention.keyring import KeyWrapper, LocalKeyWrapper, RootKeyError

_log = get_logger(__name__)


def encode_root_key(key: bytes) -> str:
    """The text form of a root key (standard base64), as files and variables hold it."""
    return base64.b64encode(key).decode("ascii")


def decode_root_key(text: str, *, source: str) -> bytes:
    """Parse base64 or hex text into a 32-byte key; RootKeyError naming ``source`` otherwise."""
    value = text.strip()
    key: bytes | None = None
    if len(value) == 2 * crypto.KEY_BYTES:
        try:
            key = bytes.fromhex(value)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != crypto.KEY_BYTES:
        raise RootKeyError(
            f"{source} does not hold a {crypto.KEY_BYTES}-byte key as base64 or hex "
            "(create one with `broker retention generate-root-key --out FILE`)"
        )
    return key


def generate_root_key_file(path: Path) -> None:
    """Write a new random root key to ``path`` (mode 0600); FileExistsError if it exists.

    Never overwrites: replacing a root key in place would make every stored tenant key
    unreadable. Rotate with ``broker retention rotate-root`` instead.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(encode_root_key(secrets.token_bytes(crypto.KEY_BYTES)) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def load_key_wrapper(config: Config, environ: Mapping[str, str] | None = None) -> KeyWrapper | None:
    """The root key wrapper ``config`` asks for, or None when retention is not configured.

    RootKeyError if the configuration is ambiguous, the key is missing or malformed, or the
    file sits beside the data it protects (see the module docstring).
    """
    env = os.environ if environ is None else environ
    section = config.retention
    sources = [
        name
        for name, value in (
            ("root_key_file", section.root_key_file),
            ("root_key_env", section.root_key_env),
            ("pkcs11", section.pkcs11),
        )
        if value is not None
    ]
    if not sources:
        return None
    if len(sources) > 1:
        raise RootKeyError(f"retention: set only one of {', '.join(sources)}")
    if section.pkcs11 is not None:
        from broker.retention.pkcs11 import Pkcs11KeyWrapper  # noqa: PLC0415 - optional dep

        return Pkcs11KeyWrapper.from_config(section.pkcs11, env)
    if section.root_key_env is not None:
        text = env.get(section.root_key_env)
        if not text:
            raise RootKeyError(
                f"retention.root_key_env names {section.root_key_env}, which is not set"
            )
        return LocalKeyWrapper(decode_root_key(text, source=f"${section.root_key_env}"))
    assert section.root_key_file is not None
    return LocalKeyWrapper(_read_key_file(section.root_key_file, config, section))


def _read_key_file(path: Path, config: Config, section: RetentionConfig) -> bytes:
    _check_location(path, config, section)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise RootKeyError(
            f"retention root key file {path} does not exist; restore it, or for a new "
            "deployment create it with `broker retention generate-root-key --out FILE`"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RootKeyError(f"retention root key file {path} cannot be read: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("retention_root_key_file_permissive", path=str(path), mode=oct(mode & 0o777))
    return decode_root_key(text, source=f"retention root key file {path}")


def _check_location(path: Path, config: Config, section: RetentionConfig) -> None:
    key_path = path.expanduser().resolve()
    guarded = [config.data_dir.expanduser().resolve()]
    url = config.database_url
    if url.startswith("sqlite:///"):
        guarded.append(Path(url.removeprefix("sqlite:///")).expanduser().resolve().parent)
    for directory in guarded:
        if key_path.is_relative_to(directory):
            if section.unsafe_allow_root_key_in_data_dir:
                _log.warning(
                    "retention_root_key_beside_data", path=str(key_path), data=str(directory)
                )
                return
            raise RootKeyError(
                f"retention root key file {path} is inside {directory}, beside the data it "
                "protects; move it (for example to a secrets mount) or set "
                "retention.unsafe_allow_root_key_in_data_dir = true for a throwaway node"
            )
