"""Pseudonymisation of user ids: HMAC-SHA256 (hex) under a secret key (README: Pseudonymisation).

With ``privacy.pseudonymize_user_id: true`` ingest replaces every ``user_id`` by its HMAC before
anything is written, so no later table (sessions, sequences, embeddings, clusters, profiles) ever
sees a raw id; evaluation pseudonymises the ground truth's ids the same way before joining.

The key comes from the environment variable ``privacy.key_env`` or, on Databricks, from
``dbutils.secrets.get(privacy.secret_scope, privacy.secret_key)``; configuration only names
where it is.  The HMAC is computed with Spark built-ins (Spark has no ``hmac`` function): the
key is folded into the two padded blocks of RFC 2104 on the driver, and those reach the executors
as a one-row broadcast DataFrame rather than as literals, because literals are printed in query
plans (``explain``, the Spark UI, event logs) and the padded blocks give the key back by XOR.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.config import ConfigError, PrivacyConfig

#: RFC 2104 recommends a key at least as long as the hash output (32 bytes for SHA-256).
MIN_KEY_BYTES = 32
_BLOCK = 64
_INNER = "__hmac_inner"
_OUTER = "__hmac_outer"


class PrivacyError(ConfigError):
    """Pseudonymisation is on but no usable key was found (a configuration error: exit 2)."""


def resolve_key(privacy: PrivacyConfig, spark: SparkSession | None = None) -> bytes | None:
    """The HMAC key as bytes, or None when pseudonymisation is off.

    Raises :class:`PrivacyError` (never showing the key) when it is on and the key is missing or
    shorter than :data:`MIN_KEY_BYTES`.
    """
    if not privacy.pseudonymize_user_id:
        return None
    if bool(privacy.secret_scope) != bool(privacy.secret_key):
        raise PrivacyError("privacy.secret_scope and privacy.secret_key must be set together")
    value, origin = _from_secret_scope(privacy, spark), "Databricks secret"
    if value is None:
        value, origin = os.environ.get(privacy.key_env), f"environment variable {privacy.key_env}"
    if not value:
        where = f"the environment variable {privacy.key_env}"
        if privacy.secret_scope:
            where += (
                f" (the secret {privacy.secret_scope}/{privacy.secret_key} is read only on "
                "Databricks)"
            )
        raise PrivacyError(
            "privacy.pseudonymize_user_id is on but no key was found: set "
            f"{where} to a random secret of at least {MIN_KEY_BYTES} bytes, e.g. the output "
            "of `openssl rand -hex 32`"
        )
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise PrivacyError(
            f"privacy.pseudonymize_user_id: the key in the {origin} is shorter than "
            f"{MIN_KEY_BYTES} bytes; use a random secret, e.g. `openssl rand -hex 32`"
        )
    return key


def _from_secret_scope(privacy: PrivacyConfig, spark: SparkSession | None) -> str | None:
    """The key from a Databricks secret scope, or None where dbutils does not exist."""
    if not (privacy.secret_scope and privacy.secret_key):
        return None
    try:
        from pyspark.dbutils import DBUtils
    except ImportError:
        return None
    session = spark or SparkSession.builder.getOrCreate()
    secret = DBUtils(session).secrets.get(scope=privacy.secret_scope, key=privacy.secret_key)
    return str(secret) if secret else None


class Pseudonymizer:
    """HMAC-SHA256 of strings under one key, in Spark and in plain Python (same result).

    Holds only the two padded key blocks, and never prints them.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_BLOCK, b"\x00")
        self._inner = bytes(b ^ 0x36 for b in block)
        self._outer = bytes(b ^ 0x5C for b in block)

    @classmethod
    def from_config(
        cls, privacy: PrivacyConfig | None, spark: SparkSession | None = None
    ) -> Pseudonymizer | None:
        """A pseudonymizer when ``privacy`` turns it on, else None (see :func:`resolve_key`)."""
        key = resolve_key(privacy, spark) if privacy is not None else None
        return cls(key) if key is not None else None

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<hidden>)"

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the key material into whatever is pickled (a closure, a task).
        raise TypeError("a Pseudonymizer is not picklable; its key stays on the driver")

    def hex(self, value: str) -> str:
        """The HMAC of one string, in Python (for small driver-side lookups)."""
        inner = hashlib.sha256(self._inner + value.encode("utf-8")).digest()
        return hashlib.sha256(self._outer + inner).hexdigest()

    def with_key(self, df: DataFrame) -> DataFrame:
        """``df`` with the key blocks attached as two columns (one broadcast row), for
        :meth:`hmac`; :meth:`drop_key` removes them."""
        spark = df.sparkSession
        keys = spark.createDataFrame(
            [(bytearray(self._inner), bytearray(self._outer))],
            f"{_INNER} binary, {_OUTER} binary",
        )
        return df.crossJoin(F.broadcast(keys))

    @staticmethod
    def hmac(value: Column) -> Column:
        """HMAC-SHA256 (lower-case hex) of a string column of a :meth:`with_key` DataFrame;
        null stays null."""
        inner = F.sha2(F.concat(F.col(_INNER), value.cast("binary")), 256)
        return F.sha2(F.concat(F.col(_OUTER), F.unhex(inner)), 256)

    @staticmethod
    def drop_key(df: DataFrame) -> DataFrame:
        return df.drop(_INNER, _OUTER)

    def pseudonymize(self, df: DataFrame, columns: Mapping[str, Column] | str) -> DataFrame:
        """Replace columns by the HMAC of an expression: ``{"user_id": F.trim("user_id")}``,
        or one column name to hash as it is."""
        targets = {columns: F.col(columns)} if isinstance(columns, str) else dict(columns)
        keyed = self.with_key(df)
        return keyed.select(
            *[
                self.hmac(targets[c]).alias(c) if c in targets else F.col(f"`{c}`")
                for c in df.columns
            ]
        )
