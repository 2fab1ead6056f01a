"""The Kafka clients' TLS context from the configuration, and which connection failures stop the start for good
(tests/integration/test_secured_kafka.py runs both against Apache Kafka with a SASL_SSL listener)."""

import ssl

import msgspec
import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from worker.config import ConfigError, KafkaConfig
from worker.pipeline.kafka import refusal, tls_context

SASL_SSL = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")


def test_the_broker_certificate_and_its_host_name_are_verified_by_default():
    context = tls_context(SASL_SSL)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    unchecked = tls_context(msgspec.structs.replace(SASL_SSL, ssl_check_hostname=False))
    assert unchecked.verify_mode == ssl.CERT_REQUIRED
    assert not unchecked.check_hostname


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ssl_cafile": "/no/such/ca.pem"}, "kafka.ssl_cafile '/no/such/ca.pem' cannot be loaded"),
        ({"ssl_certfile": "/no/such/client.pem"}, "kafka.ssl_certfile '/no/such/client.pem' cannot be loaded"),
        ({"ssl_keyfile": "/some/client.key"}, "kafka.ssl_keyfile is set but kafka.ssl_certfile is not"),
    ],
)
def test_a_tls_file_that_cannot_be_loaded_is_a_configuration_error_naming_its_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        tls_context(msgspec.structs.replace(SASL_SSL, **settings))


def test_refused_credentials_and_an_unverified_certificate_are_refusals_with_their_reason(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "router")
    reason = refusal(SaslAuthenticationFailed("invalid credentials with SASL mechanism SCRAM-SHA-512"), SASL_SSL)
    assert reason is not None
    assert reason.startswith("authentication failed for user 'router' with SCRAM-SHA-512")
    assert "$KAFKA_SASL_PASSWORD" in reason
    unverified = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    unverified.verify_message = "unable to get local issuer certificate"
    reason = refusal(unverified, msgspec.structs.replace(SASL_SSL, ssl_cafile="/etc/kafka/ca.pem"))
    assert reason == (
        "certificate verify failed: unable to get local issuer certificate "
        "(trusted: the system's CAs and kafka.ssl_cafile /etc/kafka/ca.pem)"
    )


def test_a_broker_not_up_yet_is_no_refusal():
    for exc in (ConnectionRefusedError(111, "Connection refused"), KafkaConnectionError("no"), TimeoutError()):
        assert refusal(exc, SASL_SSL) is None
