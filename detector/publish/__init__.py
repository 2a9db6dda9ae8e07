"""Where events go: MQTT and its outbox, Home Assistant, control, clips, stdout, metrics, systemd notify."""
