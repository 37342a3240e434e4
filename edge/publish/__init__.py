"""Publishing verdicts: a durable outbox in front of MQTT, so nothing is lost while the broker is away."""
