"""Device simulators: publish believable sensor traffic to an MQTT broker for demos and tests."""
