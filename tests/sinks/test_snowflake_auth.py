"""Snowflake authentication: password or key pair (private key file, optional passphrase)."""

from __future__ import annotations

from pathlib import Path

import pytest
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sinkhelpers import snowflake_config

from gateway.config import parse_config
from gateway.errors import ConfigError, SinkError
from gateway.services.fakesnow import FakeSnow
from gateway.sinks.snowflake import connection_args


def write_key(path: Path, passphrase: bytes | None) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return key


def test_key_pair_with_passphrase_becomes_jwt_connection_arguments(
    tmp_path: Path, fakesnow: FakeSnow
) -> None:
    key = write_key(tmp_path / "rsa_key.p8", b"s3cret")
    config = snowflake_config(
        fakesnow,
        password=None,
        private_key_file=tmp_path / "rsa_key.p8",
        private_key_passphrase="s3cret",
        role="EDGE_LOADER",
        warehouse="EDGE_WH",
    )
    args = connection_args(config)
    assert args["authenticator"] == "SNOWFLAKE_JWT" and "password" not in args
    assert (args["role"], args["warehouse"]) == ("EDGE_LOADER", "EDGE_WH")
    loaded = serialization.load_der_private_key(args["private_key"], password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.private_numbers() == key.private_numbers()
    # The connector signs its login with the key; the emulator accepts any signature.
    con = snowflake.connector.connect(**args)
    try:
        cursor = con.cursor().execute("SELECT 1")
        assert cursor is not None and cursor.fetchall() == [(1,)]
    finally:
        con.close()


def test_wrong_passphrase_names_the_key_file(tmp_path: Path, fakesnow: FakeSnow) -> None:
    write_key(tmp_path / "rsa_key.p8", b"right")
    config = snowflake_config(
        fakesnow,
        password=None,
        private_key_file=tmp_path / "rsa_key.p8",
        private_key_passphrase="wrong",
    )
    with pytest.raises(SinkError, match=r"rsa_key\.p8.*passphrase"):
        connection_args(config)


def test_password_comes_from_the_environment_and_one_credential_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "from-env")
    sink = {
        "type": "snowflake",
        "name": "warehouse",
        "account": "xy12345.eu-central-1",
        "user": "EDGE",
        "database": "IOT",
        "schema": "RAW",
    }
    config = parse_config({"sinks": [{**sink, "password": "${SNOWFLAKE_PASSWORD}"}]})
    args = connection_args(config.sinks[0])  # type: ignore[arg-type]
    assert args["password"] == "from-env" and args["account"] == "xy12345.eu-central-1"
    assert "from-env" not in repr(config)
    with pytest.raises(ConfigError, match="exactly one of `password` and `private_key_file`"):
        parse_config({"sinks": [sink]})
