"""Signed verdicts and signed operator feedback: who wrote a record, checked by whoever acts on it.

The guard signs every ``ApprovedAction`` it publishes; the actuator sinks execute
only verdicts whose signature verifies, whose ``policy_version`` is the policy they
run with and whose action has not expired (``verdict_problems``). The NOC signs every
``Feedback`` it publishes; the guard answers a pending action only with feedback
whose signature verifies (``feedback_authentic``). A record written by anyone else
on the topic, with or without broker ACLs, is refused by content it cannot forge.

Why HMAC-SHA256 and not Ed25519: the standard library has it (no new dependency on
the guard's or the sinks' hosts, nothing to build), each key has exactly one writer
(the guard for verdicts, the NOC for feedback) and a small set of readers that run
in the same control zone, and a shared key per conduit is what IEC 62443-style
zone/conduit designs already hand out. The price: a sink that holds the verdict key
could sign verdicts itself. Broker ACLs (only the guard writes ``actions.approved``)
close that path; Ed25519, with the sinks holding only the public key, would close it
without ACLs and is the upgrade if sinks ever run outside the guard's zone.

What is signed: a domain tag (``opsloop.verdict.v1`` or ``opsloop.feedback.v1``)
and the record's canonical JSON (keys sorted, no whitespace, ASCII), every field but
``key_id`` and ``signature``, as the record decodes from Avro (so the signer signs
the decoded form, with defaults filled in). The domain tag keeps a feedback
signature from ever passing as a verdict's.

Keys come from settings (``OPSLOOP_VERDICT_KEY``, ``OPSLOOP_FEEDBACK_KEY``) as
``kid:secret[,kid:secret...]``: the first key signs, every listed key verifies, so a
key is rotated by prepending the new one everywhere and removing the old one later.
A secret is at least 32 characters. Nothing here puts a secret in a ``repr``, a log
line or an exception text: ``Keyring`` shows only its key ids.

>>> keys = Keyring.parse("k2:" + "s" * 32 + ",k1:" + "t" * 32)
>>> keys
Keyring(key_ids=('k2', 'k1'))
>>> record = {"action": {"action_id": "a1", "expires_ms": 2000}, "verdict": "approved", "policy_version": "v2"}
>>> signed = sign_verdict(record, keys)
>>> signed["key_id"], len(signed["signature"])
('k2', 64)
>>> verdict_problems(signed, keys, "v2", now_ms=1000)
[]
>>> forged = {**signed, "action": {"action_id": "a1", "expires_ms": 3_600_000}}
>>> [r.code for r in verdict_problems(forged, keys, "v2", now_ms=1000)]
['bad_signature']
>>> [r.code for r in verdict_problems(signed, keys, "v999", now_ms=1000)]
['policy_mismatch']
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Mapping

from opsloop.models.guard import Reason

VERDICT_DOMAIN = b"opsloop.verdict.v1\n"
FEEDBACK_DOMAIN = b"opsloop.feedback.v1\n"
SIGNATURE_FIELDS = ("key_id", "signature")
MIN_SECRET_CHARS = 32

# Why a sink refuses a verdict (codes, counted like the guard's):
UNSIGNED = "unsigned_verdict"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
POLICY_MISMATCH = "policy_mismatch"
EXPIRED = "expired"
VERDICT_CHECK_CODES = frozenset({UNSIGNED, UNKNOWN_KEY, BAD_SIGNATURE, POLICY_MISMATCH, EXPIRED})


class SigningError(ValueError):
    """A record cannot be signed (no key) or a key setting is malformed; never carries a secret."""


@dataclass(frozen=True)
class Keyring:
    """HMAC keys by id; the first one signs. ``repr`` shows the ids only."""

    _keys: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def parse(cls, text: str | None, setting: str = "key") -> "Keyring":
        """``kid:secret[,kid:secret...]``; empty or None: no key. Errors name the setting and the entry, not the
        secret.

        >>> Keyring.parse("")
        Keyring(key_ids=())
        >>> Keyring.parse("k1:short", "OPSLOOP_VERDICT_KEY")
        Traceback (most recent call last):
        ...
        opsloop.models.signing.SigningError: OPSLOOP_VERDICT_KEY: key 'k1' is shorter than 32 characters
        """
        keys: list[tuple[str, bytes]] = []
        for n, entry in enumerate(e.strip() for e in (text or "").split(",") if e.strip()):
            kid, sep, secret = entry.partition(":")
            kid = kid.strip()
            if not sep or not kid or not kid.replace("-", "").replace("_", "").replace(".", "").isalnum() \
                    or len(kid) > 64:
                raise SigningError(f"{setting}: entry {n + 1} must be kid:secret with a short alphanumeric key id")
            if len(secret) < MIN_SECRET_CHARS:
                raise SigningError(f"{setting}: key {kid!r} is shorter than {MIN_SECRET_CHARS} characters")
            if any(k == kid for k, _ in keys):
                raise SigningError(f"{setting}: key id {kid!r} is listed twice")
            keys.append((kid, secret.encode("utf-8")))
        return cls(tuple(keys))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(kid for kid, _ in self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={self.key_ids!r})"

    __str__ = __repr__

    def sign(self, domain: bytes, payload: bytes) -> tuple[str, str]:
        if not self._keys:
            raise SigningError("no signing key configured")
        kid, secret = self._keys[0]
        return kid, hmac.new(secret, domain + payload, hashlib.sha256).hexdigest()

    def verify(self, domain: bytes, payload: bytes, kid: str | None, signature: str | None) -> str | None:
        """None when ``signature`` is a valid signature by key ``kid``; else the reason code."""
        if not kid or not signature:
            return UNSIGNED
        secret = dict(self._keys).get(kid)
        if secret is None:
            return UNKNOWN_KEY
        expected = hmac.new(secret, domain + payload, hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, str(signature)) else BAD_SIGNATURE


def _keyring(keys: Keyring | str | None, setting: str) -> Keyring:
    return keys if isinstance(keys, Keyring) else Keyring.parse(keys, setting)


def canonical(record: Mapping) -> bytes:
    """The bytes signed for ``record``: sorted-key compact ASCII JSON of every field but the signature's.

    >>> canonical({"b": 1.5, "a": "é", "key_id": "k1", "signature": "00"})
    b'{"a":"\\\\u00e9","b":1.5}'
    """
    body = {k: v for k, v in record.items() if k not in SIGNATURE_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_bytes).encode()


def _bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    raise TypeError(f"cannot sign a {type(value).__name__}")


def _signed(record: Mapping, keys: Keyring | str | None, domain: bytes, setting: str) -> dict:
    keyring = _keyring(keys, setting)
    if not keyring:
        raise SigningError(f"no signing key configured: set {setting}")
    kid, signature = keyring.sign(domain, canonical(record))
    return {**record, "key_id": kid, "signature": signature}


def sign_verdict(record: Mapping, keys: Keyring | str | None) -> dict:
    """``record`` (an ApprovedAction as it decodes) with ``key_id`` and ``signature`` set."""
    return _signed(record, keys, VERDICT_DOMAIN, "OPSLOOP_VERDICT_KEY")


def sign_feedback(record: Mapping, keys: Keyring | str | None) -> dict:
    """``record`` (a Feedback as it decodes) signed with the NOC's feedback key (a ``Keyring`` or the setting's
    text); raises ``SigningError`` when there is none."""
    full = {"comment": None, **record}  # as it decodes: the optional comment is there
    return _signed(full, keys, FEEDBACK_DOMAIN, "OPSLOOP_FEEDBACK_KEY")


def feedback_authentic(record: Mapping, keys: Keyring) -> str | None:
    """None when ``record`` carries a valid NOC signature; else why not (a reason code)."""
    return keys.verify(FEEDBACK_DOMAIN, canonical(record), record.get("key_id"), record.get("signature"))


def verdict_authentic(record: Mapping, keys: Keyring) -> str | None:
    """None when ``record`` (an ApprovedAction) carries a valid guard signature; else why not (a reason code)."""
    return keys.verify(VERDICT_DOMAIN, canonical(record), record.get("key_id"), record.get("signature"))


def verdict_problems(record: Mapping, keys: Keyring, policy_label: str, now_ms: int) -> list[Reason]:
    """Why a sink must not execute ``record`` (an ApprovedAction); empty when it may.

    The signature is checked first: the other checks read fields only a verified record vouches for.
    """
    why = verdict_authentic(record, keys)
    if why == UNSIGNED:
        return [Reason(UNSIGNED, "the verdict carries no signature: not written by the guard")]
    if why == UNKNOWN_KEY:
        return [Reason(UNKNOWN_KEY, f"the verdict is signed with key {str(record.get('key_id'))[:64]!r}, "
                                    "which this sink does not hold")]
    if why == BAD_SIGNATURE:
        return [Reason(BAD_SIGNATURE, "the verdict's signature does not match its content: forged or altered")]
    problems = []
    if record.get("policy_version") != policy_label:
        problems.append(Reason(POLICY_MISMATCH, f"decided under policy {str(record.get('policy_version'))[:64]!r}, "
                                                f"not the current {policy_label!r}"))
    expires_ms = record.get("action", {}).get("expires_ms")
    if not isinstance(expires_ms, int) or now_ms >= expires_ms:
        problems.append(Reason(EXPIRED, "the action has expired"))
    return problems
