"""Client security settings: from Settings to librdkafka's and aiokafka's configs, never leaking the password."""

from __future__ import annotations

import pytest

from opsloop.config.settings import Settings
from opsloop.connectors.kafka import client_config, security_config

pytestmark = pytest.mark.unit
SECURE = {"OPSLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "OPSLOOP_KAFKA_SASL_USERNAME": "guard",
          "OPSLOOP_KAFKA_SASL_PASSWORD": "pw-0123456789", "OPSLOOP_KAFKA_CA_FILE": "/etc/opsloop/ca.pem"}


def test_plaintext_is_the_default_and_adds_nothing():
    assert security_config(Settings()) == {}
    config = client_config(Settings(broker="k:9092"))
    assert config["bootstrap.servers"] == "k:9092" and not any(k.startswith(("security.", "sasl.", "ssl.")) for k in config)
    assert config["logger"] is not None  # every client logs through the rate-limited logger


def test_sasl_ssl_settings_become_librdkafka_config():
    config = security_config(Settings.from_env(SECURE))
    assert config == {"security.protocol": "SASL_SSL", "ssl.endpoint.identification.algorithm": "https",
                      "ssl.ca.location": "/etc/opsloop/ca.pem", "sasl.mechanism": "SCRAM-SHA-512",
                      "sasl.username": "guard", "sasl.password": "pw-0123456789"}


def test_the_password_may_come_from_a_file_and_is_never_in_repr_or_errors(tmp_path):
    secret = tmp_path / "guard.password"
    secret.write_text("pw-from-file\n")
    env = {**SECURE, "OPSLOOP_KAFKA_SASL_PASSWORD": "", "OPSLOOP_KAFKA_SASL_PASSWORD_FILE": str(secret)}
    settings = Settings.from_env(env)
    assert security_config(settings)["sasl.password"] == "pw-from-file"
    assert "pw-from-file" not in repr(settings) and "pw-0123456789" not in repr(Settings.from_env(SECURE))
    missing = settings.replace(kafka_sasl_password_file=tmp_path / "none")
    with pytest.raises(ValueError, match="cannot read") as err:
        missing.kafka_password()
    assert "pw-" not in str(err.value)
    child = Settings.from_env(env).kafka_env()
    assert child["OPSLOOP_KAFKA_SASL_PASSWORD_FILE"] == str(secret) and "OPSLOOP_KAFKA_SASL_PASSWORD" not in child


@pytest.mark.parametrize("env, message", [
    ({"OPSLOOP_KAFKA_SECURITY_PROTOCOL": "TLS"}, "expected one of"),
    ({"OPSLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "OPSLOOP_KAFKA_SASL_USERNAME is required"),
    ({"OPSLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "OPSLOOP_KAFKA_SASL_USERNAME": "x"}, "PASSWORD"),
])
def test_incomplete_security_settings_fail_at_start(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_the_faust_app_gets_an_ssl_context_with_our_ca_and_scram():
    import ssl

    import certifi  # any PEM bundle will do: the context must load it

    from opsloop.streams.app import broker_security

    assert broker_security(Settings()) == {}
    ca = certifi.where()
    credentials = broker_security(Settings.from_env({**SECURE, "OPSLOOP_KAFKA_CA_FILE": str(ca)}))["broker_credentials"]
    assert (credentials.username, credentials.password) == ("guard", "pw-0123456789")
    assert str(credentials.mechanism.value) == "SCRAM-SHA-512" and credentials.protocol.value == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED and credentials.ssl_context.check_hostname
    assert "pw-0123456789" not in repr(credentials)


def test_a_worker_runs_each_agent_as_its_own_principal_when_credentials_are_given(tmp_path, monkeypatch):
    import threading

    from opsloop.streams import worker

    for name in ("rollup", "guard"):
        (tmp_path / f"{name}.password").write_text(f"pw-{name}\n")
    settings = Settings.from_env({**SECURE, "OPSLOOP_KAFKA_SASL_USERNAME": "admin",
                                  "OPSLOOP_KAFKA_CREDENTIALS_DIR": str(tmp_path)})
    assert security_config(settings.as_principal("rollup"))["sasl.username"] == "rollup"
    assert security_config(settings.as_principal("rollup"))["sasl.password"] == "pw-rollup"
    assert settings.as_principal("views") == settings  # no password file: the process's own identity
    assert Settings().as_principal("rollup") == Settings()  # plaintext: nothing to change
    seen = {}

    class Agent:
        def __init__(self, name, settings):
            self.name, self.settings = name, settings

        def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
            seen[self.name] = self.settings.kafka_sasl_username
            return {}

    monkeypatch.setattr(worker, "AGENTS", {n: (lambda s, site, n=n: Agent(n, s)) for n in ("rollup", "guard")})
    worker.run(settings, ["rollup", "guard"], exit_when_idle=True, site=object())
    assert seen == {"rollup": "rollup", "guard": "guard"}
